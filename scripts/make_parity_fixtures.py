r"""Writes the golden-output parity fixtures: small random-weight reference models and their outputs.

Needs torch and transformers (`pip install -e '.[torch]'`), for vjepa2_official a checkout of facebookresearch/vjepa2
named by $VJEPA2_REPO, and for videoprism_official a checkout of google-deepmind/videoprism named by $VIDEOPRISM_REPO
(with einshape installed); run by hand, not in CI, and commit the result:
  python scripts/make_parity_fixtures.py                       # every model, into tests/fixtures/parity/
  python scripts/make_parity_fixtures.py --only videomae vivit

Each model's maker lives in scripts/parity/<model>.py and writes cases out_dir/<case>/{source/, io.npz, case.json};
tests/test_parity.py converts every case with vidjax and compares its outputs with io.npz.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import shutil

HERE = pathlib.Path(__file__).parent
MAKERS = ("videomae", "timesformer", "vivit", "videomamba", "gpt2", "captioner", "svt", "videomae_v2", "to_hf",
          "vjepa2", "vjepa2_official", "videoprism", "videoprism_official", "clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE.parent / "tests" / "fixtures" / "parity"))
    parser.add_argument("--only", nargs="*", default=list(MAKERS), choices=MAKERS)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    for name in args.only:
        spec = importlib.util.spec_from_file_location(f"parity_{name}", HERE / "parity" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for old in out.glob(f"{name}_*"):
            if not any(old.name.startswith(f"{other}_") for other in MAKERS if other.startswith(f"{name}_")):
                shutil.rmtree(old)  # (videomae_v2_* cases are videomae_v2's, not videomae's)
        out.mkdir(parents=True, exist_ok=True)
        module.make(out)
        print(f"{name}: {sorted(p.name for p in out.glob(f'{name}_*'))}")


if __name__ == "__main__":
    main()
