"""Facts about the source model that decide whether and how its artifact may be published: its
license (copied into the variant's model card) and whether it is gated (its weights are baked
into the artifact, so a gated model is not republished unless publish.allow_gated=true).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from pipeline.hub import _call, hub_api


def front_matter(text: str) -> dict:
    """The YAML metadata block of a model card (README.md), {} when it has none."""
    import yaml

    end = text.find("\n---", 3) if text.startswith("---") else -1
    with contextlib.suppress(yaml.YAMLError):
        meta = yaml.safe_load(text[3:end]) if end > 0 else None
        return meta if isinstance(meta, dict) else {}
    return {}


def _source_file(model: dict, name: str) -> Path | None:
    """A file of the source model: in its local folder, or in the local HF cache (never fetched)."""
    if model.get("local"):
        p = Path(model.get("path") or model["id"]).expanduser() / name
        return p if p.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model["id"], name, revision=model.get("revision") or "main")
    except Exception:
        return None
    return Path(found) if isinstance(found, str) else None


def source_facts(model: dict, online: bool) -> dict:
    """What publishing a source model's artifact depends on. `license` (with `license_name`,
    `license_link`): the card's front matter, else config.json's `license`, else (online) the
    Hub's card data; None when unknown. `gated`: why the model is gated (card front matter
    `gated` / `extra_gated_*`, or online `model_info().gated`), None when it is not.
    Raises PublishError when the online check fails (unknown is not "not gated")."""
    card, card_path = {}, _source_file(model, "README.md")
    with contextlib.suppress(OSError):
        card = front_matter(card_path.read_text(errors="replace")) if card_path else {}
    facts = {k: card.get(k) for k in ("license", "license_name", "license_link")}
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        config = _source_file(model, "config.json")
        facts["license"] = facts["license"] or (json.loads(config.read_text()).get("license") if config else None)
    gate = card.get("gated")
    reasons = [f"gated: {gate}"] if gate not in (None, False) and str(gate).lower() not in ("false", "no", "0") else []
    reasons += [k for k in card if str(k).startswith("extra_gated_")]
    if online and not model.get("local") and not (reasons and facts["license"]):
        api = hub_api()  # where models come from: HF_ENDPOINT
        info = _call(lambda: api.model_info(model["id"], revision=model.get("revision")), "reading", model["id"],
                     api.endpoint)  # fmt: skip
        if getattr(info, "gated", None):
            reasons.append(f"the Hub gates it ({info.gated})")
        data = getattr(info, "card_data", None) or {}
        facts["license"] = facts["license"] or data.get("license")
    facts["gated"] = f"{model.get('id')}: " + ", ".join(reasons) if reasons else None
    return facts
