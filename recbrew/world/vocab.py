"""Word lists the synthetic network is written from.

Functions and industries are the two axes of every member's and item's topic; skills, titles,
post phrases and hashtags are tied to a function so the text carries the signal a ranker must
learn (a data scientist's profile and a Spark job posting share words).
"""

from __future__ import annotations

FUNCTIONS = (
    "Software Engineering", "Data Science", "Product Management", "Design", "Marketing", "Sales",
    "Finance", "Human Resources", "Operations", "Customer Success", "Legal", "Research",
)
#: Role noun per function, combined with a seniority prefix into a job title.
ROLES = (
    "Software Engineer", "Data Scientist", "Product Manager", "Product Designer", "Marketing Manager",
    "Account Executive", "Financial Analyst", "HR Business Partner", "Operations Manager",
    "Customer Success Manager", "Corporate Counsel", "Research Scientist",
)
SKILLS = (
    ("Python", "Java", "Kubernetes", "Distributed Systems", "Go", "System Design", "AWS", "Rust", "CI/CD", "Microservices"),
    ("Machine Learning", "SQL", "Statistics", "PyTorch", "A/B Testing", "Spark", "Causal Inference", "NLP", "Recommender Systems", "Data Visualization"),
    ("Roadmapping", "User Research", "Prioritization", "Agile", "Product Strategy", "Go-to-Market", "Analytics", "Stakeholder Management", "PRDs", "Experimentation"),
    ("Figma", "Prototyping", "Interaction Design", "Design Systems", "Usability Testing", "Visual Design", "Accessibility", "UX Writing", "Motion Design", "Information Architecture"),
    ("SEO", "Content Strategy", "Brand Management", "Marketing Automation", "Paid Social", "Copywriting", "Demand Generation", "Email Marketing", "Market Research", "Growth Marketing"),
    ("Negotiation", "Salesforce", "Pipeline Management", "Enterprise Sales", "Prospecting", "Account Management", "Forecasting", "Cold Calling", "Solution Selling", "Partnerships"),
    ("Financial Modeling", "Excel", "Valuation", "FP&A", "Accounting", "Budgeting", "Risk Management", "Corporate Finance", "Audit", "Treasury"),
    ("Recruiting", "Talent Management", "Employee Relations", "Compensation", "Onboarding", "HRIS", "Performance Management", "DEI", "Workforce Planning", "Labor Law"),
    ("Supply Chain", "Lean Six Sigma", "Logistics", "Process Improvement", "Procurement", "Inventory Management", "Vendor Management", "Project Management", "ERP", "Quality Assurance"),
    ("Customer Retention", "Onboarding Programs", "Zendesk", "Churn Analysis", "Customer Journey", "Renewals", "Customer Advocacy", "Support Operations", "NPS", "Upselling"),
    ("Contract Law", "Compliance", "Privacy", "Intellectual Property", "Litigation", "Corporate Governance", "GDPR", "Regulatory Affairs", "M&A", "Employment Law"),
    ("Experimental Design", "Scientific Writing", "Deep Learning", "Optimization", "Simulation", "Grant Writing", "Bayesian Methods", "Computer Vision", "Reinforcement Learning", "Peer Review"),
)
#: Pairs of functions whose members also care about each other's content.
RELATED_FUNCTIONS = ((0, 1), (0, 3), (1, 11), (2, 3), (2, 0), (4, 5), (5, 9), (6, 8), (7, 10), (8, 9), (10, 6), (11, 1))

INDUSTRIES = (
    "Technology", "Financial Services", "Healthcare", "Education", "Retail", "Manufacturing",
    "Media", "Energy", "Government", "Consulting",
)
INDUSTRY_WORDS = (
    ("Cloud", "Labs", "Systems", "Software", "AI"), ("Capital", "Bank", "Payments", "Partners", "Invest"),
    ("Health", "Medical", "Therapeutics", "Care", "Bio"), ("Learning", "Academy", "EdTech", "Schools", "Tutoring"),
    ("Retail", "Commerce", "Brands", "Stores", "Goods"), ("Industries", "Manufacturing", "Robotics", "Materials", "Works"),
    ("Media", "Studios", "News", "Entertainment", "Publishing"), ("Energy", "Power", "Solar", "Grid", "Renewables"),
    ("Public Services", "Agency", "Civic", "Council", "Authority"), ("Consulting", "Advisors", "Strategy", "Group", "Associates"),
)
COMPANY_STEMS = (
    "North", "Blue", "Bright", "Silver", "Cedar", "Summit", "River", "Iron", "Nova", "Apex", "Harbor", "Maple",
    "Quantum", "Vertex", "Lumen", "Orbit", "Granite", "Clear", "Pioneer", "Falcon", "Aurora", "Crest", "Pine", "Atlas",
    "Beacon", "Coral", "Delta", "Echo", "Fjord", "Golden", "Helix", "Indigo", "Juniper", "Kite", "Lotus", "Meridian",
)
SENIORITIES = ("Intern", "Junior", "Mid-level", "Senior", "Lead", "Director")
#: Title prefix per seniority; mid-level carries none.
SENIORITY_PREFIX = ("", "Junior ", "", "Senior ", "Lead ", "Director of ")
LOCATIONS = (
    "San Francisco, CA", "New York, NY", "Seattle, WA", "Austin, TX", "Boston, MA", "Chicago, IL",
    "Los Angeles, CA", "Denver, CO", "Atlanta, GA", "Toronto, Canada", "London, UK", "Berlin, Germany",
    "Paris, France", "Amsterdam, Netherlands", "Dublin, Ireland", "Bangalore, India", "Singapore",
    "Sydney, Australia", "Tokyo, Japan", "Sao Paulo, Brazil",
)
SCHOOLS = (
    "Stanford University", "MIT", "UC Berkeley", "Carnegie Mellon University", "University of Michigan",
    "Georgia Tech", "University of Texas at Austin", "University of Washington", "Cornell University",
    "University of Toronto", "Imperial College London", "TU Munich", "ETH Zurich", "IIT Bombay",
    "National University of Singapore", "University of Sydney", "Columbia University", "NYU",
    "University of Illinois", "Purdue University", "Boston University", "UCLA", "Duke University",
    "Northwestern University",
)
DEGREES = ("BSc", "BA", "MSc", "MBA", "PhD", "BEng")
FIRST_NAMES = (
    "Aisha", "Ben", "Carlos", "Dana", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kara", "Liam",
    "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wei", "Ximena",
    "Yusuf", "Zoe", "Amir", "Bea", "Chen", "Diego", "Emma", "Femi", "Gita", "Hugo", "Isla", "Jonas",
    "Kenji", "Lucia", "Mateo", "Nadia", "Omar", "Paula", "Ravi", "Sofia", "Tomas", "Uma", "Victor", "Yara",
)
LAST_NAMES = (
    "Adams", "Bauer", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Hughes", "Ito", "Johnson", "Khan",
    "Lopez", "Martin", "Nguyen", "Okafor", "Patel", "Quinn", "Rossi", "Singh", "Tanaka", "Usman", "Varga",
    "Walker", "Xu", "Yamada", "Zhang", "Andersen", "Brown", "Costa", "Dubois", "Eriksen", "Ferreira",
    "Gupta", "Hansen", "Ivanova", "Jensen", "Kowalski", "Larsen", "Moreau", "Novak",
)
#: Post sentence openers, one short clause each; the topic words follow.
POST_OPENERS = (
    "Excited to share what our team learned about", "Three lessons from a year of working on",
    "Hot take:", "We are hiring people who love", "A short thread on", "Just published a deep dive into",
    "What nobody tells you about", "Grateful to have presented our work on", "Reading list for anyone into",
    "Unpopular opinion about",
)
POST_CLOSERS = (
    "What would you add?", "Thoughts?", "Link in the comments.", "Proud of this team.",
    "Would love to hear your experience.", "Happy to chat if you are working on this too.",
)
POST_FORMATS = ("text", "image", "video", "article", "poll", "document")
COURSE_PATTERNS = ("Mastering {}", "{} for Beginners", "Advanced {}", "{} in Practice", "{}: The Complete Guide")
EVENT_KINDS = ("Summit", "Meetup", "Conference", "Webinar", "Workshop")
NEWSLETTER_PATTERNS = ("The {} Weekly", "{} Digest", "Notes on {}", "{} Insider")
AD_PATTERNS = ("Hire top {} talent faster", "The {} platform teams trust", "Level up your {} stack", "Free trial: {} made simple")
