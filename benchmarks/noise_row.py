import time, sys, numpy as np, torch
from pathlib import Path
from skimage.restoration import estimate_sigma
from gmdm_cli.checkpoint import load_model
from gmdm_cli.image_io import read_image
from gmdm_cli.noise import raw_global_sigma, apply_calibration, calibration_for
torch.set_num_threads(2)
m = load_model("/work/wip/models/gmdm-7x7.pt")
s = float(sys.argv[1])
files = sorted(Path("/work/shared/data/bsd68").glob("*.png"))
ours, ref = [], []
t0 = time.perf_counter()
for i, f in enumerate(files):
    clean = np.asarray(read_image(f)[0], dtype=np.float64)
    noisy = clean + s/255*np.random.default_rng(i).standard_normal(clean.shape)
    raw = raw_global_sigma(m, torch.tensor(noisy, dtype=torch.float32), "flat")
    ours.append(255*apply_calibration(raw, calibration_for(m, "flat"))); ref.append(255*estimate_sigma(noisy))
e, r = np.array(ours)-s, np.array(ref)-s
print(f"sigma {s}: flat MAE {np.abs(e).mean():.2f} bias {e.mean():+.2f} | estimate_sigma MAE {np.abs(r).mean():.2f} bias {r.mean():+.2f} | {len(files)} images, {time.perf_counter()-t0:.0f} s")
