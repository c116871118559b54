"""Language models recbrew ranks with, and their tokenizers."""
