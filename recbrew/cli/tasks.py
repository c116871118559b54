"""`recbrew tasks ...`: list, validate, show and render the ranking tasks of a catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from recbrew.data.corpus import Corpus
from recbrew.data.ids import MEMBER
from recbrew.errors import UserError
from recbrew.examples.requests import SplitPlan, build_requests, time_range
from recbrew.models.tokenizers import load_tokenizer
from recbrew.scoring.answers import answer_token_ids
from recbrew.tasks import get_task, load_catalog
from recbrew.tasks.spec import Kind
from recbrew.verbalize.context import CorpusView
from recbrew.verbalize.environment import make_environment
from recbrew.verbalize.render import HistoryEntry, Renderer

app = typer.Typer(help="Author, list and validate ranking tasks (YAML) and render their prompts.",
                  no_args_is_help=True)

TasksDir = Annotated[Path | None, typer.Option("--tasks-dir", help="Your task folder (default: the shipped catalog).")]
PromptsDir = Annotated[Path | None, typer.Option("--prompts-dir", help="Your templates, searched before the shipped ones.")]
Tokenizer = Annotated[str, typer.Option("--tokenizer", help="'smollm2', a local tokenizer folder, or 'none'.")]

#: A profile and item with every field filled: validation renders each template with them.
_PROBE_MEMBER = {
    "name": "«Probe Member»", "headline": "«Engineer»", "title": "«Engineer»", "company": "Acme", "industry": "Tech",
    "function": "Engineering", "seniority": "Senior", "location": "Berlin", "skills": ["Python"], "school": "MIT",
    "degree": "MSc", "years_experience": 5, "open_to_work": True, "age": 30, "gender": "female", "occupation": "engineer",
}
_PROBE_ITEM = {
    "item_type": "job", "title": "«Engineer»", "text": "«We build things.»", "author": "«Probe Author»",
    "company": "Acme", "topic": "Engineering", "industry": "Tech", "location": "Berlin", "remote": True,
    "seniority": "Senior", "skills": ["Python"], "hashtags": ["Python"], "format": "text", "genres": None, "year": None,
    "name": None, "headline": None,
    "social": {"engaged_count": 1, "engaged_names": ["«A»"], "mutual_count": 2, "mutual_names": ["«B»"],
               "shared_company": True, "shared_school": False},
}


def _tokenizer(name: str):
    if name == "none":
        return None

    return load_tokenizer(name)


def _summary(task) -> dict:
    return {"name": task.name, "version": task.version, "surface": task.surface, "kind": task.kind.value,
            "split": task.split.value, "candidate_type": task.candidate_type, "style": task.style,
            "description": task.description}


@app.command("list")
def list_tasks(tasks_dir: TasksDir = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the tasks of a catalog: name, surface, kind, T1/T2 split."""
    rows = [_summary(t) for t in load_catalog(tasks_dir).values()]
    if as_json:
        typer.echo(json.dumps({"tasks": rows, "count": len(rows),
                               "surfaces": sorted({r["surface"] for r in rows}),
                               "splits": {s: sum(r["split"] == s for r in rows) for s in ("T1", "T2")}}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} tasks")
    for col in ("name", "surface", "kind", "split", "style", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["surface"], r["kind"], r["split"], r["style"], r["description"])
    Console(width=160).print(table)


def validate_catalog(tasks_dir=None, prompts_dir=None, tokenizer: str = "none") -> list[str]:
    """Load every task, render its template with a probe profile, check its answer words; returns names."""
    env = make_environment(prompts_dir)
    catalog = load_catalog(tasks_dir)
    for task in catalog.values():
        renderer = Renderer(task, env=env)
        k = task.k if task.kind == Kind.listwise else 1
        history = [HistoryEntry(g, 0, dict(_PROBE_ITEM), "1d ago") for g in range(len(task.history.groups))]
        network = {"connections": 3, "companies": ["Acme"], "creators": ["«C»"]}
        renderer.render(_PROBE_MEMBER, [dict(_PROBE_ITEM)] * k, history, network=network)
    # The tokenizer loads only once the files themselves are known to be good.
    tok = _tokenizer(tokenizer)
    if tok is not None:
        for task in catalog.values():
            if task.kind != Kind.generative:
                answer_token_ids(task, tok)
    return list(catalog)


@app.command("validate")
def validate(
    directory: Annotated[Path | None, typer.Argument(help="Task folder (default: the shipped catalog).")] = None,
    prompts_dir: PromptsDir = None,
    tokenizer: Tokenizer = "smollm2",
) -> None:
    """Check every task: YAML fields, its template renders, answer words are single tokens."""
    names = validate_catalog(directory, prompts_dir, tokenizer)
    typer.echo(f"{len(names)} tasks valid")


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Task name.")], tasks_dir: TasksDir = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print one task's full definition (defaults filled in)."""
    import yaml

    data = get_task(name, tasks_dir).model_dump(mode="json")
    typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False, width=100))


@app.command("render")
def render(
    name: Annotated[str, typer.Argument(help="Task name.")],
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus folder (e.g. a generated world).")],
    member_id: Annotated[str, typer.Option("--member", help="member_id whose latest request is rendered (your id, "
                                                           "as imported).")],
    style: Annotated[str | None, typer.Option(help="Prompt style (e.g. compact, prose).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Token budget of the prompt.")] = None,
    tasks_dir: TasksDir = None,
    prompts_dir: PromptsDir = None,
    tokenizer: Tokenizer = "smollm2",
) -> None:
    """Render the member's most recent request of a task; print the prompt, its tokens and what was cut."""
    import numpy as np

    task = get_task(name, tasks_dir)
    renderer = Renderer(task, prompts_dir=prompts_dir, tokenizer=_tokenizer(tokenizer), style=style)
    data = Corpus.load(corpus)
    start, end = time_range(data)
    req = build_requests(data, task, SplitPlan(cutoff=end + 1, gap_seconds=0, end=end), seed=0)
    member = data.ids.corpus_id(MEMBER, data.ids.from_text(MEMBER, member_id))
    mine = np.flatnonzero(req.member_id == member) if member is not None else np.zeros(0, dtype=np.int64)
    if len(mine) == 0:
        some = ", ".join(str(m) for m in data.ids.users(MEMBER, np.unique(req.member_id)[:5]))
        raise UserError(f"member {member_id} has no request for task {name} in {corpus}"
                        + (f"; members that do: {some}" if some else ""))
    i = int(mine[-1])
    view = CorpusView(data)
    t = int(req.timestamp[i])
    cands = [int(c) for c in req.candidates[req.offsets[i]:req.offsets[i + 1]]]
    if task.stats.collab:  # the preview's rating model: the whole log but this request's targets
        from recbrew.verbalize.collab import fit, training_pairs

        pairs = training_pairs(data, task.label.positive, task.label.negatives, {(member, c) for c in cands}, None)
        view.collab[task.name] = fit(*pairs)
        typer.echo(f"(rating model for stats.collab: fitted on {len(pairs[0]):,} labelled interactions of this Corpus, "
                   "all but this request's; `recbrew data build` fits it on the training side of the split)")
    friends = view.connections(member, t)
    history = view.history(member, t, task)
    prompt = renderer.render(view.member(member, req.hide_skill[i] if req.hide_skill else None),
                             [view.candidate(member, c, t, task, friends) for c in cands],
                             history, network=view.network(member, t), max_tokens=max_tokens)
    typer.echo(prompt.text(0))
    typer.echo("-" * 60)
    if prompt.prefix_tokens is not None:
        typer.echo(f"tokens: {prompt.max_tokens} (prefix {prompt.prefix_tokens} shared by {len(prompt.segments)} "
                   f"segment(s) of {min(prompt.segment_tokens)}-{max(prompt.segment_tokens)}); budget "
                   f"{max_tokens or renderer.task.history.max_tokens}{'; OVER BUDGET' if prompt.over_budget else ''}")
    cut = ", ".join(f"{n} from '{g}'" for g, n in prompt.cut_by_group.items()) or "nothing"
    typer.echo(f"history: kept {prompt.history_kept}, cut {prompt.history_cut} ({cut})")
    for line in group_lines(data, member, t, renderer.task, history, prompt.cut_by_group):
        typer.echo(line)
    if req.target:
        typer.echo(f"target: {req.target[i]}")


def group_lines(corpus, member: int, t: int, task, history, cut_by_group: dict[str, int]) -> list[str]:
    """One line per history group of ``task``: how many entries the prompt shows, and for a group that shows
    none, why (no such action before the request time, none at all, taken by an earlier group, cut)."""
    from datetime import datetime, timezone

    import numpy as np
    import pyarrow.compute as pc

    inter = corpus.interactions.filter(pc.equal(corpus.interactions["member_id"], member))
    action = inter["action"].to_numpy(zero_copy_only=False).astype(str)
    surface = (inter["surface"].to_numpy(zero_copy_only=False).astype(str) if "surface" in inter.column_names
               else np.full(len(action), "", dtype=str))
    ts = inter["timestamp"].to_numpy()
    when = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = []
    for g, spec in enumerate(task.history.groups):
        selected = sum(e.group == g for e in history)
        shown = selected - cut_by_group.get(spec.phrase, 0)
        head = f"group '{spec.phrase}': "
        if shown:
            lines.append(head + f"{shown} shown")
            continue
        what = f"'{spec.action}' action" + (f" on surface '{spec.surface}'" if spec.surface else "")
        acted = action == spec.action
        match = acted & ((surface == spec.surface) if spec.surface else True)
        before = match & (ts < t)
        if selected:
            why = f"all {selected} cut by history.max_items or the token budget"
        elif not match.any():
            elsewhere = int(acted.sum()) if spec.surface else 0
            why = f"the member has no {what} in the log" + (f" ({elsewhere} on other surfaces)" if elsewhere else "")
        elif not before.any():
            why = f"no {what} before the request time ({when}); {int(match.sum())} at or after it"
        else:
            earlier = next((o.phrase for o in task.history.groups[:g]
                            if o.action == spec.action and (o.surface is None or o.surface == spec.surface)), None)
            why = (f"its {int(before.sum())} action(s) go to the earlier group '{earlier}'" if earlier else
                   f"its {int(before.sum())} action(s) are older than the newest {4 * task.history.max_items} "
                   "the history looks at")
        lines.append(head + "empty: " + why)
    return lines
