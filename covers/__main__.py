"""Command line: ``python -m covers predict PATH...`` and ``python -m covers similar COVER`` with a registered model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from covers.serving.inputs import InputItem, iter_inputs, read_cover

ALIAS = "champion"
DEFAULT_MODEL = f"the newest covers-* model with @{ALIAS}"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
CHUNK = 256
CHUNK_BYTES = (
    256 * 2**20
)  # encoded bytes held at once (each member is within ingest's limits, see covers.serving.inputs)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


DESCRIPTION = f"""Genres of album covers, and the most similar training covers, from a model in the MLflow registry
(default {DEFAULT_MODEL}; python experiments/promote.py registers one):

  python -m covers predict PATH...   the top genres of every cover under each PATH
  python -m covers similar COVER     the training covers most similar to COVER, and their genre vote

Run python -m covers predict --help (or similar --help) for their options."""
EXAMPLES = """examples:
  python -m covers predict cover.png new-covers/ Rock.zip --top-k 2
  python -m covers similar cover.png -k 10
  python -m covers similar Rock.zip:Rock/0042.png --json"""
PATH_HELP = (
    "an image file, a folder (its image files and .zip archives, recursively) or a .zip archive (its image "
    "members); several may be given"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``predict`` and ``similar`` sub-commands."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m covers", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=raw
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=None, help=f"MLflow model URI (default {DEFAULT_MODEL})")
    common.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help="MLflow tracking/registry store (default $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = "top-k genres of image files, folders and genre zips"
    p = sub.add_parser("predict", parents=[common], help=predict, description=f"The {predict}.")
    p.add_argument("paths", nargs="+", metavar="PATH", help=PATH_HELP)
    p.add_argument("--top-k", type=positive_int, default=3, help="genres per cover (default 3)")
    similar = "the training covers most similar to a cover"
    s = sub.add_parser("similar", parents=[common], help=similar, description=f"{similar.capitalize()}.")
    s.add_argument("cover", metavar="COVER", help="an image file, or ARCHIVE.zip:MEMBER")
    s.add_argument("-k", type=positive_int, default=5, help="number of similar covers (default 5)")
    s.add_argument(
        "--keep-self",
        action="store_true",
        help="keep gallery covers with the same pixels as COVER (by default a training cover does not find itself)",
    )
    return parser


def load_model(uri: str | None, tracking_uri: str):
    """The pyfunc model at ``uri`` (default: :func:`covers.tracking.registry.newest_champion`), read from the store
    at ``tracking_uri``."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    from covers.serving.cover_model import quiet_any_hint
    from covers.tracking.runs import check_sqlite_store, resolve_sqlite_uri

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise FileNotFoundError(f"no MLflow store at {tracking_uri} (pass --tracking-uri or set MLFLOW_TRACKING_URI)")
    store = resolve_sqlite_uri(tracking_uri)
    check_sqlite_store(store, write=False)
    mlflow.set_tracking_uri(store)
    if uri is None:
        from covers.tracking.registry import newest_champion

        uri = newest_champion(mlflow.MlflowClient(), ALIAS)
        print(f"model: {uri} (--model chooses another)", file=sys.stderr)
    with quiet_any_hint():
        return mlflow.pyfunc.load_model(uri)


def chunks(items: Iterator[InputItem], size: int, max_bytes: int = CHUNK_BYTES) -> Iterator[list[InputItem]]:
    """Consecutive lists of at most ``size`` items, each ended as soon as its covers' bytes reach ``max_bytes``."""
    chunk, nbytes = [], 0
    for item in items:
        chunk.append(item)
        nbytes += len(item.data or b"")
        if len(chunk) == size or nbytes >= max_bytes:
            yield chunk
            chunk, nbytes = [], 0
    if chunk:
        yield chunk


def predict_paths(model, paths: list[str], top_k: int) -> Iterator[dict[str, Any]]:
    """Per cover: ``file``, top-k ``predictions`` (genre, probability) or an ``error``."""
    for chunk in chunks(iter_inputs(paths), CHUNK):
        readable = [item for item in chunk if item.data is not None]
        rows = iter(model.predict([item.data for item in readable]) if readable else [])
        for item in chunk:
            row = next(rows) if item.data is not None else {"error": item.error}
            if row["error"]:
                yield {"file": item.name, "predictions": [], "error": row["error"]}
                continue
            ranked = sorted(row["probabilities"].items(), key=lambda kv: -kv[1])[:top_k]
            preds = [{"genre": g, "probability": p} for g, p in ranked]
            yield {"file": item.name, "predictions": preds, "error": None}


def cmd_predict(args: argparse.Namespace) -> int:
    """Print each cover's top-k genres; report unreadable covers on stderr. Exit 1 if any failed."""
    model = load_model(args.model, args.tracking_uri)
    results, failed = [], 0
    for res in predict_paths(model, args.paths, args.top_k):
        failed += res["error"] is not None
        if res["error"]:
            print(f"error: {res['file']}: {res['error']}", file=sys.stderr)
        if args.json:
            results.append(res)
        elif not res["error"]:
            print("\t".join([res["file"], *(f"{p['genre']} {p['probability']:.3f}" for p in res["predictions"])]))
    if args.json:
        print(json.dumps(results, indent=2))
    if failed:
        print(f"{failed} cover(s) could not be predicted", file=sys.stderr)
    return 1 if failed else 0


def cmd_similar(args: argparse.Namespace) -> int:
    """Print the nearest training covers with genre and similarity, and their genre vote."""
    model = load_model(args.model, args.tracking_uri).unwrap_python_model().model
    item = read_cover(args.cover)
    images, errors = model.prepare([item.data] if item.data is not None else [])
    error = item.error or errors[0]
    if error:
        print(f"error: {item.name}: {error}", file=sys.stderr)
        return 1
    table = model.similar(images, args.k, keep_self=args.keep_self)[0]
    votes = Counter(table["genre"])
    genre = max(votes, key=lambda g: (votes[g], table.loc[table["genre"] == g, "similarity"].sum()))
    if args.json:
        out = {"cover": item.name, "neighbours": table.to_dict("records"), "votes": dict(votes), "genre": genre}
        print(json.dumps(out, indent=2))
        return 0
    for row in table.itertuples(index=False):
        print(f"{row.rank:>3}  {row.similarity:.4f}  {row.genre:<20} {row.archive}:{row.member}")
    tally = ", ".join(f"{g} {n}/{len(table)}" for g, n in votes.most_common())
    print(f"genre vote: {genre} ({tally})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m covers`` and the ``covers`` script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"predict": cmd_predict, "similar": cmd_similar}[args.command](args)
    except (OSError, ValueError, LookupError, RuntimeError, MlflowException) as e:  # one line, no traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except SQLAlchemyError as e:  # the store failed under MLflow: the database's own message, not the SQL
        cause = getattr(e, "orig", None) or e
        print(f"error: MLflow store {args.tracking_uri}: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
