"""Our tiled inference vs MONAI's ``sliding_window_inference``, side by side.

Same model (the project U-Net, width 8, depth 3, seed 0, on buckets scaled by the fixed
dataset normalisation), same image, same tile size and overlap (MONAI's overlap is a
fraction: overlap/tile). Each method runs in its own child process on the full image
(default 9344 × 7000 × 16 uint16 on disk; MONAI needs it in memory as a float tensor, we
read tiles from the memmap), so peak RSS and throughput are measured alike. Errors
against full-image inference are measured on a crop that fits in memory, where both
methods run the same way. MONAI is a bench-only extra: pip install monai.

Exits 1 unless our peak memory ≤ 1/3 of MONAI's, our throughput ≥ MONAI's, and our error
is ≥ 100× smaller.

    .venv/bin/python bench/tiling_vs_monai.py [--height 9344 --width 7000 --tile 512 --overlap 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

from cpikan.arguments import ArgumentParser
from cpikan.psi.synth import WaferSpec, write_dataset

CHILD = r"""
import json, sys, time, numpy as np, torch
from cpikan.memory import peak_rss_mb

from cpikan.nn.unet import UNet
from cpikan.psi.data import normalize_buckets
from cpikan.tiling import predict_full, predict_tiled
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
model = UNet(16, 1, width=8, depth=3).eval()
image = np.load(a["dir"] + "/buckets.npy", mmap_mode="r")
if a["crop"]:
    image = np.asarray(image[:, : a["crop"], : a["crop"]])

def monai_run(img):
    from monai.inferers import sliding_window_inference
    x = torch.from_numpy(np.asarray(img, dtype=np.float32))[None]  # MONAI wants the tensor
    with torch.inference_mode():
        return sliding_window_inference(x, (a["tile"], a["tile"]), a["batch"],
                                        lambda t: model(normalize_buckets(t)),
                                        overlap=a["overlap"] / a["tile"], mode="gaussian")[0].numpy()

def ours_run(img):
    out = None
    if not a["crop"]:
        out = np.lib.format.open_memmap(a["dir"] + "/ours.npy", mode="w+", dtype=np.float32,
                                        shape=(1, *img.shape[1:]))
    return predict_tiled(model, img, tile_size=a["tile"], overlap=a["overlap"], batch_size=a["batch"], out=out,
                         normalize=normalize_buckets)

t0 = time.perf_counter()
y = monai_run(image) if a["method"] == "monai" else ours_run(image)
seconds = time.perf_counter() - t0
res = {"seconds": seconds, "peak_rss_kb": peak_rss_mb() * 1024}
if a["crop"]:
    full = predict_full(model, image, normalize=normalize_buckets)
    res["rel_err"] = float(np.abs(y - full).max() / np.abs(full).max())
print(json.dumps(res))
"""


def child(args: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], stdout=subprocess.PIPE, text=True)
    if out.returncode:
        raise SystemExit(f"{args['method']} run failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=9344)
    ap.add_argument("--width", type=int, default=7000)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=1536, help="square crop for the error comparison")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        import monai  # noqa: F401
    except ImportError:
        print("MONAI is not installed: .venv/bin/pip install -c constraints.txt monai", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(WaferSpec(height=args.height, width=args.width, seed=5, noise=0.01), tmp)
        base = {"dir": tmp, "tile": args.tile, "overlap": args.overlap, "batch": args.batch,
                "threads": args.threads}
        res = {}
        for method in ("ours", "monai"):
            res[method] = child({**base, "method": method, "crop": 0})
            res[method]["rel_err"] = child({**base, "method": method, "crop": args.crop})["rel_err"]
    mpix = args.height * args.width / 1e6
    print(f"{'':<7}{'Mpix/s':>9}{'peak RSS GB':>13}{'max rel err vs full':>21}")
    for m in ("ours", "monai"):
        r = res[m]
        print(f"{m:<7}{mpix / r['seconds']:9.3f}{r['peak_rss_kb'] / 2**20:13.2f}{r['rel_err']:21.2e}")
    speed = res["monai"]["seconds"] / res["ours"]["seconds"]
    mem = res["ours"]["peak_rss_kb"] / res["monai"]["peak_rss_kb"]
    err = res["monai"]["rel_err"] / max(res["ours"]["rel_err"], 1e-12)
    ok = mem <= 1 / 3 and speed >= 1.0 and err >= 100
    print(f"image={args.height}x{args.width} tile={args.tile} overlap={args.overlap} "
          f"throughput_ratio={speed:.2f} memory_ratio={mem:.3f} "
          f"ours_err={res['ours']['rel_err']:.1e} monai_err={res['monai']['rel_err']:.1e} "
          f"error_ratio={'inf' if res['ours']['rel_err'] == 0 else f'{err:.0f}'} ok={int(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())


