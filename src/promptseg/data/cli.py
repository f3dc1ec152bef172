"""`promptseg data add|check|prepare`: thin commands over manifest.py, check.py and cache.py."""
from __future__ import annotations

from pathlib import Path

from ..errors import PromptsegError

EXIT_PENDING = 3


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="dataset manifests, integrity checks, preprocessing cache")
    sub = p.add_subparsers(dest="data_verb", metavar="ACTION")

    def _help(args) -> int:
        p.print_help()
        return 1

    p.set_defaults(func=_help)

    a = sub.add_parser("add", help="read an nnU-Net v2 / MSD / plain folder (or file patterns) and write its manifest")
    a.add_argument("dir", type=Path, help="dataset folder")
    a.add_argument("-o", "--output", type=Path, help="manifest path (default DIR/promptseg_dataset.yaml)")
    a.add_argument("--name", help="dataset name (default: the folder name)")
    a.add_argument("--modality", help="CT, MR, PET (default: from dataset.json, else guessed)")
    a.add_argument("--yes", action="store_true", help="accept low-confidence proposals")
    a.add_argument("--labels", type=Path, help="plain folders: labels file (value -> name)")
    a.add_argument("--pairs", type=Path, help="plain folders: file listing image,label pairs")
    a.add_argument("--map", action="append", default=[], metavar="NAME=CLASS",
                   help="map a label name (or value) to a class; CLASS 'ignore' drops it (repeatable)")
    a.add_argument("--image", metavar="PATTERN", help="pattern layout: image glob under DIR with a {case} key, "
                                                      "e.g. '{case}/CT_image.nii.gz' (needs --label, --value, --modality)")
    a.add_argument("--label", metavar="PATTERN", help="pattern layout: the label file of {case}")
    a.add_argument("--value", action="append", default=[], metavar="VALUE=CLASS",
                   help="pattern layout: label value -> class name (repeatable), e.g. '1=soft tissue sarcoma'")
    a.set_defaults(func=cmd_add)

    c = sub.add_parser("check", help="integrity check of dataset folders or manifests")
    c.add_argument("paths", nargs="+", type=Path, metavar="DIR_OR_MANIFEST")
    c.add_argument("--workers", type=int, default=2, help="parallel readers (threads)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("prepare", help="preprocess datasets into the cache (done once per plan)")
    r.add_argument("paths", nargs="+", type=Path, metavar="DIR_OR_MANIFEST")
    r.add_argument("--plan", default="universal_ct",
                   help="preprocessing plan for its modality; other modalities get plans.yaml's modality_defaults")
    r.add_argument("--cache-dir", type=Path, required=True)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_prepare)


def _parse_maps(items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        if "=" not in item:
            raise PromptsegError(f"--map {item!r}: expected NAME=CLASS")
        k, v = item.split("=", 1)
        out[k.strip()] = None if v.strip().lower() in ("", "ignore", "none", "null") else v.strip()
    return out


def _parse_values(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise PromptsegError(f"--value {item!r}: expected VALUE=CLASS, e.g. 1=liver")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _mapping_table(m) -> str:
    rows = [(str(l.value) if not l.values else ",".join(map(str, l.values)), l.name,
             l.target if l.target is not None else "-", l.source) for l in m.labels]
    head = ("VALUE", "NAME", "CLASS", "SOURCE")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)])


def cmd_add(args) -> int:
    from .check import require_declared_values
    from .manifest import MANIFEST_NAME, DatasetManifest, scan_folder
    from .patterns import scan_patterns

    if args.image or args.label:
        m = scan_patterns(args.dir, args.image, args.label, _parse_values(args.value), args.modality, args.name)
    else:
        m = scan_folder(args.dir, name=args.name, modality=args.modality, labels_file=args.labels,
                        pairs_file=args.pairs, overrides=_parse_maps(args.map))
    require_declared_values(m)
    out = args.output or (args.dir / MANIFEST_NAME)
    if out.is_file():  # keep decisions a user already made in an earlier manifest
        try:
            old = DatasetManifest.load(out, m.taxonomy)
        except PromptsegError:
            old = None
        if old is not None:
            decided = {(l.value, l.name): l for l in old.labels if l.source == "user" or "confirmed" in l.source}
            m.labels = [l if l.source == "user" else decided.get((l.value, l.name), l) for l in m.labels]
            still = []
            for p in m.pending:
                prev = decided.get((p.value, p.name))
                if prev is not None:
                    m.labels.append(prev)
                else:
                    still.append(p)
            m.pending = still
            m.labels.sort(key=lambda l: l.value)
    if args.yes and m.pending:
        m.confirm()
    print(f"dataset {m.name}: {m.source_format} folder, {len(m.cases)} case(s), modality {m.modality}")
    for note in m.notes:
        print(f"  note: {note}")
    print(_mapping_table(m))
    if m.unmapped:
        print("unmapped (ignored, no taxonomy class): "
              + ", ".join(f"{l.value} {l.name!r}" for l in m.unmapped))
    print("annotated classes: " + (", ".join(m.annotated_classes) or "(none)"))
    path = m.save(out)
    print(f"wrote {path}")
    if m.pending:
        print(f"\n{len(m.pending)} mapping(s) need confirmation:")
        for p in m.pending:
            print(f"  {p.describe()}")
        print(f"Edit {path}: under `pending`, set `confirm: true` (after correcting `proposal`, or "
              f"`proposal: null` to ignore), or re-run with --yes to accept the proposals, or "
              f"--map NAME=CLASS.")
        return EXIT_PENDING
    return 0


def cmd_check(args) -> int:
    from .check import check_datasets, manifest_for_check

    manifests = [manifest_for_check(p) for p in args.paths]
    report = check_datasets(manifests, workers=max(1, args.workers), progress=not args.no_progress)
    print(report.table())
    return 1 if report.errors else 0


def cmd_prepare(args) -> int:
    from ..preprocess import modality_plans
    from .cache import COUNTS, prepare_datasets
    from .manifest import load_dataset

    datasets = [load_dataset(p) for p in args.paths]
    before = dict(COUNTS)
    plans = modality_plans(args.plan)  # --plan for its modality, plans.yaml's defaults for the others
    cases = prepare_datasets(datasets, plans, args.cache_dir, workers=args.workers,
                             progress=not args.no_progress)
    done = {k: COUNTS[k] - before.get(k, 0) for k in ("preprocessed", "retargeted", "reused")}
    print(f"{len(cases)} case(s) ready in {args.cache_dir}: "
          + ", ".join(f"{n} {k}" for k, n in done.items()))
    return 0
