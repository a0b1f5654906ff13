"""Writes a vidjax/VideoMAE video list (`path label` per line) from an official Kinetics annotation CSV.

  python scripts/make_kinetics_lists.py --annotations=train.csv --videos=/data/k400/videos/train --out=train.csv

The annotation CSV has columns label, youtube_id, time_start, time_end (and split); clips are looked up in
--videos as <youtube_id>_<start:06d>_<end:06d>.<ext>. Labels are indices into the sorted class names, the
convention of the published checkpoints; --classes writes those names, one per line. Clips not found are left
out and counted. The list is written atomically.
"""

import argparse
import csv
import os
import sys

EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="official Kinetics CSV (label,youtube_id,...)")
    parser.add_argument("--videos", required=True, help="folder holding the trimmed clips")
    parser.add_argument("--out", required=True, help="video list to write")
    parser.add_argument("--classes", help="optional file to write the class names to, one per line")
    args = parser.parse_args()

    with open(args.annotations, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing_cols = {"label", "youtube_id", "time_start", "time_end"} - set(rows[0] if rows else {})
    if missing_cols:
        print(f"error: {args.annotations} lacks columns {sorted(missing_cols)}", file=sys.stderr)
        return 2
    classes = sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(classes)}
    available = {os.path.splitext(name)[0]: name for name in os.listdir(args.videos)
                 if name.endswith(EXTENSIONS)}
    lines, missing = [], 0
    for row in rows:
        stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
        if stem in available:
            lines.append(f"{os.path.abspath(os.path.join(args.videos, available[stem]))} {index[row['label']]}\n")
        else:
            missing += 1
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, args.out)
    if args.classes:
        with open(args.classes, "w", encoding="utf-8") as f:
            f.writelines(name + "\n" for name in classes)
    print(f"wrote {len(lines)} clips of {len(classes)} classes to {args.out}; {missing} not found in {args.videos}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
