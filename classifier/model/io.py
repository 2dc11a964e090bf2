"""Saving and loading models with skops, never pickle; the model card beside the file.

Why skops with an allow-list: a model file is something people download and share.
A pickle runs arbitrary code on load; a skops file is a zip of JSON and arrays that is
only turned back into objects of types the loader explicitly trusts. ``load_bundle``
lists every type the file's schema names (skops would trust all scikit-learn classes
by default; vpnid trusts fewer), refuses the file if any of them is not on
:data:`TRUSTED_TYPES`, and only then loads it, passing skops exactly the types it
reports as untrusted after that check.

Why the byte-level normalisation in ``save_bundle``: zip entries carry the time they
were written, so two trainings of the same data would give different files. Entries
are rewritten with a fixed date, which makes ``make model`` reproducible byte for byte.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from classifier.errors import VpnidError
from classifier.output import write_bytes_atomic, write_text_atomic

#: File format tag stored in every bundle; bumped when the bundle layout changes.
BUNDLE_FORMAT = "vpnid-model/1"

#: Every type a vpnid model file may contain (plain builtins included). Anything else is refused,
#: including scikit-learn classes skops itself would trust by default.
TRUSTED_TYPES: tuple[str, ...] = (
    "builtins.NoneType",
    "classifier.model.ensemble.MeanProbability",
    "classifier.model.ensemble.SeedBag",
    "builtins.bool",
    "builtins.dict",
    "builtins.float",
    "builtins.int",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
    "numpy.dtype",
    "numpy.float32",
    "numpy.float64",
    "numpy.int64",
    "numpy.ndarray",
    "numpy.random._generator.Generator",
    "numpy.uint64",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
)


def types_in_schema(schema: dict | list) -> set[str]:
    """Every ``module.class`` a skops schema would instantiate or reference (objects and type nodes)."""
    found: set[str] = set()
    stack: list = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node and "__module__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _types_in_file(data: bytes) -> set[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return types_in_schema(json.loads(z.read("schema.json")))


class ModelError(VpnidError):
    """A model file that cannot be used: missing, unreadable, untrusted or incompatible."""


def card_paths(model_path: str | Path) -> tuple[Path, Path]:
    """The model card files that belong to a model file: ``NAME.card.json`` and ``NAME.card.md``."""
    p = Path(model_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(f"{stem}.card.json"), p.with_name(f"{stem}.card.md")


_ID = re.compile(rb'("__id__": )(\d+)|"(\d+)\.npy"')


def _normalised_zip(data: bytes) -> bytes:
    """Rewrite a skops zip so equal content gives equal bytes.

    skops names objects and array files after their memory addresses (``id()``), and
    zip entries carry the time of writing; both are replaced by stable values: object
    ids renumbered in order of first appearance in ``schema.json`` (consistently in the
    schema and in the array file names), fixed entry dates and attributes.
    """
    src = zipfile.ZipFile(io.BytesIO(data))
    schema = src.read("schema.json")
    ids: dict[bytes, bytes] = {}

    def renumber(m: re.Match[bytes]) -> bytes:
        old = m.group(2) or m.group(3)
        new = ids.setdefault(old, str(len(ids) + 1).encode())
        return m.group(1) + new if m.group(1) else b'"' + new + b'.npy"'

    schema = _ID.sub(renumber, schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        entries = {"schema.json": schema}
        for name in src.namelist():
            if name.endswith(".npy") and name[:-4].isdigit():
                entries[ids[name[:-4].encode()].decode() + ".npy"] = src.read(name)
            elif name != "schema.json":
                entries[name] = src.read(name)
        for name in sorted(entries):
            fixed = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, entries[name])
    return out.getvalue()


def save_bundle(bundle: dict[str, Any], path: str | Path, card: dict[str, Any] | None = None) -> None:
    """Write ``bundle`` with skops (atomically) and, when given, its card as JSON and Markdown."""
    import skops.io as sio

    data = sio.dumps(bundle)
    unknown = sorted(_types_in_file(data) - set(TRUSTED_TYPES))
    if unknown:  # a model we could not load again must never be written
        raise ModelError(f"refusing to save a model with types outside the allow-list: {', '.join(unknown)}")
    write_bytes_atomic(path, _normalised_zip(data))
    if card is not None:
        jpath, mpath = card_paths(path)
        write_text_atomic(jpath, json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
        write_text_atomic(mpath, card_markdown(card))


def load_bundle(path: str | Path) -> dict[str, Any]:
    """Load a model bundle, refusing any file that would instantiate an untrusted type."""
    import skops.io as sio

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file (train one with `vpnid train` or `make model`)")
    try:
        data = p.read_bytes()
        present = _types_in_file(data)
        untrusted = set(sio.get_untrusted_types(data=data))
    except Exception as exc:  # not a zip, damaged JSON schema, ...
        raise ModelError(f"{p}: not a readable skops model file ({type(exc).__name__}: {exc})") from None
    unknown = sorted((present | untrusted) - set(TRUSTED_TYPES))
    if unknown:
        raise ModelError(f"{p}: refusing to load: the file contains types that are not on vpnid's allow-list: "
                         f"{', '.join(unknown)}")
    try:
        bundle = sio.loads(data, trusted=sorted(untrusted))
    except Exception as exc:
        raise ModelError(f"{p}: cannot load model ({type(exc).__name__}: {exc})") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        found = bundle.get("format") if isinstance(bundle, dict) else type(bundle).__name__
        raise ModelError(f"{p}: not a vpnid model (format {found!r}, expected {BUNDLE_FORMAT!r})")
    return bundle


def load_card(model_path: str | Path) -> dict[str, Any] | None:
    """The JSON model card beside a model file, or None when there is none."""
    jpath, _ = card_paths(model_path)
    if not jpath.is_file():
        return None
    try:
        return json.loads(jpath.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{jpath}: unreadable model card ({exc})") from None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def card_markdown(card: dict[str, Any]) -> str:
    """Human-readable model card (the JSON card is the source of truth).

    Tables are sorted by name, so the card reads the same whether it is rendered at training
    or again from the saved JSON (whose keys are sorted).
    """
    lines = [f"# Model card: {card.get('name')} {card.get('version', '')}".rstrip(), ""]
    lines += [card.get("summary", ""), ""]
    lines += ["## Decision", "",
              f"- estimator: {card.get('estimator')}"
              + (f" ({card['estimator_description']})" if card.get("estimator_description") else ""),
              f"- calibration: {card.get('calibration')}",
              f"- operating threshold: {_fmt(card.get('threshold'))} "
              f"(chosen for a false-positive rate of at most {card.get('fpr_target')} on out-of-fold non-VPN flows)",
              ""]
    data = card.get("training_data", {})
    cfg = card.get("train_config", {})
    minima = (f"{cfg.get('min_tunnel_packets', 0)} packets, one-way flows "
              f"{cfg.get('min_one_way_tunnel_packets', 0)}")
    lines += ["## Training data", "",
              f"- flows: {data.get('flows')} ({data.get('vpn_flows')} VPN, {data.get('non_vpn_flows')} non-VPN)",
              f"- captures: {data.get('captures', 'not recorded')}",
              f"- groups (lab scenarios, other capture files): {data.get('groups')}",
              f"- VPN flows left out of fitting: {data.get('vpn_flows_left_out_short', 0)} shorter than the "
              f"minimum ({minima}), {data.get('vpn_flows_left_out_cleartext', 0)} cleartext tunnels "
              "(readable inner headers)",
              f"- augmentation: {data.get('augmentation')}",
              *([f"- snapshot length: {data['snaplen']}"] if data.get("snaplen") else []),
              *([f"- host capture: {data['host_capture']}"] if data.get("host_capture") else []),
              f"- sha256 of features and labels: `{data.get('sha256')}`",
              f"- sha256 of the input files (names and contents): `{data.get('inputs_sha256')}`", ""]
    if data.get("protocols"):
        lines += ["| protocol | VPN flows |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(data["protocols"].items())]
        lines.append("")
    if data.get("inputs"):
        lines += ["| input | sha256 | flows used | VPN |", "|---|---|---|---|"]
        lines += [f"| {i['path']} | `{i.get('sha256', '')[:16]}` | {i.get('flows')} | {i.get('vpn_flows')} |"
                  for i in data["inputs"]]
        lines.append("")
    metrics = card.get("metrics", {})
    if metrics:
        lines += ["## Metrics (grouped cross-validation by capture, out-of-fold)", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items()) if not isinstance(v, dict | list)]
        lines.append("")
    cands = card.get("candidates", {})
    if cands:
        lines += ["## Candidates compared", "", "| estimator | pAUC (FPR<=1%) | ROC-AUC | recall at target FPR |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(v.get('pauc'))} | {_fmt(v.get('roc_auc'))} | {_fmt(v.get('recall_at_target'))} |"
                  for k, v in sorted(cands.items())]
        lines.append("")
    imp = card.get("top_features", [])
    if imp:
        lines += ["## Most important features (permutation importance)", ""]
        lines += [f"- `{f['name']}` ({_fmt(f['importance'])}): {f.get('doc', '')}" for f in imp]
        lines.append("")
    typical = card.get("typical_values")
    if typical:
        kinds = sorted(next(iter(typical.values())))
        lines += ["## Typical values", "",
                  "Medians over the training flows of each transport, VPN / non-VPN: what the evidence "
                  "compares a flow's values with (docs/model.md, Evidence).", "",
                  "| feature | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        lines += [f"| `{name}` | " + " | ".join(f"{v[k][0]:.4g} / {v[k][1]:.4g}" for k in kinds) + " |"
                  for name, v in sorted(typical.items())]
        lines.append("")
    lines += ["## Features", "", f"{len(card.get('features', []))} features, version {card.get('feature_version')}; "
              "see docs/model.md. Never used: IP addresses, ports, TTL, timestamps, capture names.", ""]
    lines += ["## Library versions", ""]
    lines += [f"- {k} {v}" for k, v in sorted(card.get("libraries", {}).items())]
    lines.append("")
    return "\n".join(lines)
