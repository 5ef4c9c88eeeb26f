"""Named prompt sets for evaluation. ``paper``: the 25 editing prompts of the FaceLock paper
(Tab. A3), in three groups: facial features (10), accessories (8), background (7).
``paper-code``: the same 25 as FaceLock's released code spells them (``utils.edit_prompts``), where two
differ from the paper: "Let the person have a tatto" and "Let the person grow a mustach". Edits of the
paper's numbers were made with that spelling; the text encoder sees other tokens."""

from __future__ import annotations

from pathlib import Path

from guardkit.errors import ConfigError

PAPER_PROMPTS: dict[str, tuple[str, ...]] = {
    "facial": (
        "Turn the person's hair pink", "Let the person turn bald", "Let the person have a tattoo",
        "Let the person wear purple makeup", "Let the person grow a mustache", "Turn the person into a zombie",
        "Change the skin color to Avatar blue", "Add elf-like ears", "Add large vampire fangs",
        "Apply Goth style makeup",
    ),
    "accessory": (
        "Let the person wear a police suit", "Let the person wear a bowtie", "Let the person wear a helmet",
        "Let the person wear sunglasses", "Let the person wear earrings", "Let the person smoke a cigar",
        "Place a headband in the hair", "Place a tiara on the top of the head",
    ),
    "background": (
        "Let it be snowy", "Change the background to a beach", "Add a city skyline background",
        "Add a forest background", "Change the background to a desert", "Set the background in a library",
        "Let the person stand under the moon",
    ),
}
#: the released code's spelling of the two prompts it spells differently from the paper
CODE_SPELLING: dict[str, str] = {"Let the person have a tattoo": "Let the person have a tatto",
                                 "Let the person grow a mustache": "Let the person grow a mustach"}
PROMPT_SETS: dict[str, tuple[str, ...]] = {
    "paper": tuple(p for group in PAPER_PROMPTS.values() for p in group),
    **{f"paper-{group}": prompts for group, prompts in PAPER_PROMPTS.items()},
    "paper-code": tuple(CODE_SPELLING.get(p, p) for group in PAPER_PROMPTS.values() for p in group),
}


def prompt_group(prompt: str) -> str:
    """The paper's group of a prompt ("facial", "accessory", "background"; either spelling), or "custom"."""
    paper = {code: text for text, code in CODE_SPELLING.items()}.get(prompt, prompt)
    return next((g for g, prompts in PAPER_PROMPTS.items() if paper in prompts), "custom")


def resolve_prompts(spec: str) -> list[str]:
    """A named set (``paper``, ``paper-facial``, ...), a text file (one prompt a line), or prompts
    separated by ``|``."""
    if spec in PROMPT_SETS:
        return list(PROMPT_SETS[spec])
    path = Path(spec)
    if path.suffix == ".txt":
        if not path.is_file():
            raise ConfigError(f"{path}: prompt file not found")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        prompts = [p.strip() for p in spec.split("|") if p.strip()]
    if not prompts:
        raise ConfigError(f"no prompts in {spec!r}; named sets: {', '.join(PROMPT_SETS)}")
    return prompts
