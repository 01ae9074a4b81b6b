"""`python -m studies.reconstruct`: real-format bucket files in, height/mask/preview/VTK
out, one MLflow run per wafer; bad input is one line, exit 2, nothing written."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpikan.psi import physics
from tests.helpers import run_main

ROOT = Path(__file__).resolve().parent.parent
WAVES = (5.0, 5.5, 6.05, 6.655)


def tilted_wafer(h=64, w=80):
    yy, xx = np.mgrid[0:h, 0:w]
    return (-1.4 + 27.1 * (0.6 * xx / (w - 1) + 0.4 * yy / (h - 1))).astype(np.float64)


def write_bmp_buckets(folder: Path, height: np.ndarray, noise=0.005) -> Path:
    folder.mkdir(parents=True)
    buckets = physics.quantize(physics.add_noise(physics.render(height), noise), 8)
    for i, b in enumerate(buckets):
        Image.fromarray(b).save(folder / f"bucket_{i:02d}.bmp")
    (folder / "wavelengths.txt").write_text(" ".join(map(str, WAVES)) + "\n")
    return folder


def _run_process(args, mlruns, cwd=ROOT):
    """``python -m studies.reconstruct ARGS`` as a process of its own."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CPIKAN_MLRUNS=str(mlruns), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "studies.reconstruct", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd)


def _run(args, mlruns, cwd=ROOT):
    """The same command's main() in this process (tests/helpers.py: run_main)."""
    from studies.reconstruct import main

    return run_main(main, args, mlruns, cwd)


def test_bmp_buckets_of_a_tilted_wafer_reconstruct_with_default_flags(tmp_path, capsys):
    import meshio

    truth = tilted_wafer()
    wafer = write_bmp_buckets(tmp_path / "wafer_07", truth)
    out = _run_process([wafer, "--out", tmp_path / "out", "--pixel-pitch", "3.5"], tmp_path / "mlruns")
    assert out.returncode == 0, out.stderr
    res = tmp_path / "out" / "wafer_07"
    assert sorted(p.name for p in res.iterdir()) == ["flags.npy", "height.npy", "height.tif", "mask.npy",
                                                     "preview.png", "surface.vtu"]
    height, mask = np.load(res / "height.npy"), np.load(res / "mask.npy")
    assert mask.mean() > 0.99
    assert float(np.sqrt(np.mean((height - truth)[mask] ** 2))) <= 0.05
    import tifffile

    with tifffile.TiffFile(res / "height.tif") as tif:  # Fiji and Gwyddion: µm, and no data where flagged
        assert np.array_equal(tif.asarray(), np.where(mask, height, np.nan), equal_nan=True)
        assert tif.imagej_metadata["unit"] == "micron"
        num, den = tif.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(1 / 3.5)
    mesh = meshio.read(res / "surface.vtu")
    assert mesh.points[:, 0].max() == pytest.approx(79 * 3.5)  # the pixel pitch in µm
    assert np.allclose(mesh.point_data["height_um"], height.ravel(), atol=1e-5)
    assert np.array_equal(mesh.point_data["flag"], np.load(res / "flags.npy").ravel())  # ParaView colours by cause
    # one run, with the 16 input files' hashes
    with pytest.MonkeyPatch.context() as mp:  # another test's MLflow may have set MLFLOW_TRACKING_URI
        mp.setenv("CPIKAN_MLRUNS", str(tmp_path / "mlruns"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from tracking import store

        c = store.client()
        runs = c.search_runs([c.get_experiment_by_name("reconstruct").experiment_id])
        assert len(runs) == 1 and len(runs[0].inputs.dataset_inputs) == 16
        assert runs[0].data.metrics["image_mpix"] == pytest.approx(64 * 80 / 1e6)
        # the wafer archived: its replay says how to read it there, reads it there, and checks each file
        from tracking.replay import main as replay

        (tmp_path / "archive").mkdir()
        wafer.rename(tmp_path / "archive" / "wafer_07")
        rid, moved = runs[0].info.run_id[:8], tmp_path / "archive" / "wafer_07"
        assert replay([rid]) == 2
        assert f"if it moved, pass --moved {wafer}=WHERE_IT_IS" in capsys.readouterr().err
        assert replay([rid, "--moved", f"{tmp_path / 'wafers'}={tmp_path / 'archive'}"]) == 2  # a typo
        assert f"--moved: the run read nothing under {tmp_path / 'wafers'}; it read under {wafer}\n" \
            in capsys.readouterr().err
        assert replay([rid, "--moved", f"{tmp_path}/wafer_07/={moved}"]) == 0
        res = capsys.readouterr()
        assert "reproduced" in res.out and f"read from {moved}" in res.err, res.out + res.err
        bucket = sorted(moved.iterdir())[3]
        bucket.write_bytes(bucket.read_bytes()[:-1] + b"\x00")
        assert replay([rid, "--moved", f"{tmp_path}/wafer_07={moved}"]) == 2
        assert f"({bucket}) changed since the run" in capsys.readouterr().err


def test_unpadded_file_numbers_and_a_multi_page_tiff_give_the_folders_heights(tmp_path, capsys):
    """b1 … b16 (string order would read b10 second) and one compressed 16-page TIFF:
    both reconstruct exactly as the zero-padded folder does."""
    import tifffile

    from studies.reconstruct import main

    truth = tilted_wafer()
    buckets = physics.quantize(physics.add_noise(physics.render(truth), 0.005), 16)
    padded, unpadded = tmp_path / "padded", tmp_path / "unpadded"
    for folder, fmt in ((padded, "b{:02d}.tif"), (unpadded, "b{}.tif")):
        folder.mkdir()
        for i, b in enumerate(buckets):
            tifffile.imwrite(folder / fmt.format(i + 1), b)
    tifffile.imwrite(tmp_path / "stack.tif", buckets, compression="zlib")
    heights = []
    for src in (padded, unpadded, tmp_path / "stack.tif"):
        assert main([str(src), "--out", str(tmp_path / "out"), "--no-track"]) == 0, capsys.readouterr().err
        heights.append(np.load(tmp_path / "out" / src.stem / "height.npy"))
    assert float(np.sqrt(np.mean((heights[0] - truth) ** 2))) <= 0.05
    assert np.array_equal(heights[0], heights[1]) and np.array_equal(heights[0], heights[2])
    tifffile.imwrite(tmp_path / "short.tif", buckets[:12])  # a stack that is not 16 pages: one line, exit 2
    assert main([str(tmp_path / "short.tif"), "--out", str(tmp_path / "out2"), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "must hold 16 greyscale pages" in err, err


def _layout(root: Path, case: str, buckets: np.ndarray) -> Path:
    """The same 16-bit buckets as a lab's software saves them."""
    import tifffile

    folder = root / case
    if case.endswith("npy"):
        arr = buckets.astype(">u2") if case == "big_endian_npy" else buckets.astype(np.float64) / 256
        np.save(root / f"{case}.npy", arr)
        return root / f"{case}.npy"
    if case == "hyperstack":  # ImageJ: 4 lasers (Z) × 4 buckets (C), big-endian
        tifffile.imwrite(root / "hyper.tif", buckets.reshape(4, 4, *buckets.shape[1:]), imagej=True,
                         metadata={"axes": "ZCYX"}, byteorder=">")
        return root / "hyper.tif"
    if case == "samples_planar":  # one page holding the 16 buckets as its samples, LZW: decoded to a file
        tifffile.imwrite(root / "planar.tif", buckets, planarconfig="separate", photometric="minisblack",
                         compression="lzw")
        return root / "planar.tif"
    if case == "samples_interleaved":  # one page of 16-sample pixels, uncompressed: read where it lies
        tifffile.imwrite(root / "inter.tif", np.moveaxis(buckets, 0, -1), planarconfig="contig",
                         photometric="minisblack")
        return root / "inter.tif"
    if case == "pagewise":  # a Python loop of TiffWriter.write: tifffile makes each page its own series
        with tifffile.TiffWriter(root / "pagewise.tif") as tif:
            for b in buckets:
                tif.write(b)
        return root / "pagewise.tif"
    if case == "thumbnail_first":  # a reduced-resolution preview page before the buckets (no tifffile metadata)
        with tifffile.TiffWriter(root / "thumb.tif") as tif:
            tif.write(buckets[0, ::4, ::4], subfiletype=1, metadata=None)
            for b in buckets:
                tif.write(b, metadata=None)
        return root / "thumb.tif"
    if case == "ome":  # a microscope's OME-TIFF, the buckets as its channels: out/stack, not out/stack.ome
        tifffile.imwrite(root / "stack.ome.tif", buckets, ome=True, metadata={"axes": "CYX"})
        return root / "stack.ome.tif"
    if case == "int32_samples":  # one page of 16 signed 32-bit samples, Deflate
        tifffile.imwrite(root / "i32.tif", np.moveaxis(buckets.astype(np.int32), 0, -1), planarconfig="contig",
                         photometric="minisblack", compression="zlib")
        return root / "i32.tif"
    folder.mkdir()
    for i, b in enumerate(buckets):
        path = folder / f"b{i:02d}.tif"
        if case == "labview_i16":  # LabVIEW IMAQ's I16 images: signed 16-bit, a 12-bit camera's counts
            tifffile.imwrite(path, b.astype(np.int16))
        elif case == "imagej":  # ImageJ's File › Save As › Tiff: big-endian
            tifffile.imwrite(path, b, imagej=True, byteorder=">")
        elif case == "lzw":  # OpenCV's and Pillow's default compression
            tifffile.imwrite(path, b, compression="lzw")
        elif case == "sample_axis":  # (H, W, 1)
            tifffile.imwrite(path, b[..., None], photometric="minisblack")
        elif case == "float32":  # ImageJ's 32-bit type after a flat-field division, in intensity units
            tifffile.imwrite(path, b.astype(np.float32) / 256)
        elif case == "grey_as_rgb":  # a camera program's 48-bit RGB export of a grey frame (read memory-mapped)
            tifffile.imwrite(path, np.repeat(b[..., None], 3, axis=-1), photometric="rgb")
    return folder


@pytest.mark.parametrize("case", ["imagej", "lzw", "sample_axis", "float32", "hyperstack", "big_endian_npy",
                                  "float64_npy", "samples_planar", "samples_interleaved", "pagewise",
                                  "thumbnail_first", "int32_samples", "labview_i16", "grey_as_rgb", "ome"])
def test_the_labs_file_layouts_give_the_same_heights(tmp_path, capsys, case):
    """Big-endian, LZW-compressed, (H, W, 1), float TIFFs, an ImageJ hyperstack, big-endian
    and float64 arrays, a stack written page by page, one behind a thumbnail, counts in
    signed or 32-bit pixels, grey saved as RGB: each read as the plain 16-bit files are (all
    but the hyperstack and the .npy were refused, LZW as 'unreadable or truncated'), to the
    same bytes."""
    from studies.reconstruct import main

    buckets = physics.quantize(physics.add_noise(physics.render(tilted_wafer()), 0.005), 16)
    if case == "labview_i16":
        buckets = buckets >> 4  # the 12-bit camera's counts, as uint16
    np.save(tmp_path / "plain.npy", buckets)
    src = _layout(tmp_path, case, buckets)
    if src.is_dir():  # what a Mac leaves on a shared drive beside each file: hidden, and no image
        for f in list(src.iterdir()):
            (src / f"._{f.name}").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    for wafer in (tmp_path / "plain.npy", src):
        assert main([str(wafer), "--out", str(tmp_path / "out"), "--no-track"]) == 0, capsys.readouterr().err
    named = src.stem.removesuffix(".ome")
    plain, other = (np.load(tmp_path / "out" / name / "height.npy") for name in ("plain", named))
    assert np.array_equal(plain, other)
    if case.startswith("samples"):  # the units check's sample of the first bucket reads it alike
        from cpikan.psi import io

        assert np.array_equal(io.first_channel(src, 16), io.first_channel(tmp_path / "plain.npy", 16))
    assert sorted(p.name for p in (tmp_path / "out" / named).iterdir()) == [
        "flags.npy", "height.npy", "height.tif", "mask.npy", "preview.png", "surface.vtu"]


def test_grey_saved_with_colour_a_palette_or_alpha_gives_the_grey_files_heights(tmp_path, capsys):
    """8-bit grey buckets as an image editor or camera program may save them: 24-bit RGB
    BMPs, palette PNGs (whose grey levels, not indices, are the counts: here the palette is
    inverted), grey + opaque alpha, RGBA. Each was refused as colour; each now gives the
    grey files' heights to the byte."""
    from studies.reconstruct import main

    grey = write_bmp_buckets(tmp_path / "grey", tilted_wafer(32, 40))
    for form in ("rgb", "palette", "la", "rgba"):
        folder = tmp_path / form
        folder.mkdir()
        for f in sorted(grey.glob("*.bmp")):
            g = np.asarray(Image.open(f))
            if form == "palette":
                im = Image.fromarray(255 - g).convert("P")
                im.putpalette([v for i in range(256) for v in (255 - i,) * 3])
                assert np.array_equal(np.asarray(im.convert("L")), g) and not np.array_equal(np.asarray(im), g)
                im.save(folder / f"{f.stem}.png")
            elif form == "rgb":
                Image.fromarray(np.repeat(g[..., None], 3, axis=-1)).save(folder / f.name)
            else:
                alpha = np.full_like(g, 255)
                chans = [g, alpha] if form == "la" else [g, g, g, alpha]
                Image.fromarray(np.stack(chans, axis=-1), mode=form.upper()).save(folder / f"{f.stem}.png")
    for form in ("grey", "rgb", "palette", "la", "rgba"):
        assert main([str(tmp_path / form), "--out", str(tmp_path / "out"), "--no-track"]) == 0, capsys.readouterr().err
    heights = {form: np.load(tmp_path / "out" / form / "height.npy") for form in ("grey", "rgb", "palette", "la", "rgba")}
    for form in ("rgb", "palette", "la", "rgba"):
        assert np.array_equal(heights[form], heights["grey"]), form


def test_counts_that_do_not_fit_16_bits_are_refused_naming_the_file(tmp_path, capsys):
    """A 16-bit camera's counts saved as signed 16-bit wrap round to negatives; 18-bit
    counts in a 32-bit file exceed 16 bits: neither is read (assignment would wrap them)."""
    import tifffile

    from studies.reconstruct import main

    buckets = physics.quantize(physics.render(tilted_wafer()), 16)
    cases = {"wrapped": (buckets.view(np.int16), "negative counts (down to -"),
             "wide": (buckets.astype(np.uint32) * 4, "do not fit 16 bits (uint32 pixels)")}
    for name, (data, message) in cases.items():
        (tmp_path / name).mkdir()
        for i, b in enumerate(data):
            tifffile.imwrite(tmp_path / name / f"b{i:02d}.tif", b)
        assert main([str(tmp_path / name), "--out", str(tmp_path / "out"), "--no-track"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and "b00.tif" in err, err
        assert not (tmp_path / "out" / name / "height.npy").exists()


@pytest.mark.parametrize("case", ["steps_first_names", "hyperstack_lasers_as_channels", "npy"])
def test_buckets_saved_step_first_are_refused_then_read_with_order(tmp_path, capsys, case):
    """One phase step's four lasers together (files named step first, an ImageJ hyperstack
    with the lasers as its channels, a .npy): read laser-major its fringes are noise, so the
    command refuses before computing, naming --order (it flagged every pixel noisy);
    with --order bucket-major, the same bytes as the laser-major file."""
    import tifffile

    from studies.reconstruct import main

    buckets = physics.quantize(physics.add_noise(physics.render(tilted_wafer()), 0.005), 16)
    np.save(tmp_path / "plain.npy", buckets)
    step_first = buckets.reshape(4, 4, *buckets.shape[1:]).swapaxes(0, 1)  # (step, laser, H, W)
    if case == "steps_first_names":
        src = tmp_path / "wafer"
        src.mkdir()
        for k in range(4):
            for lam in range(4):
                tifffile.imwrite(src / f"phase{k}_laser{lam}.tif", step_first[k, lam])
    elif case == "npy":
        src = tmp_path / "wafer.npy"
        np.save(src, step_first.reshape(buckets.shape))
    else:
        src = tmp_path / "wafer.tif"
        tifffile.imwrite(src, step_first, imagej=True, metadata={"axes": "ZCYX"})
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--order" in err and "bucket-major" in err, err
    assert not (out / "wafer").exists() and not (out / "wafer.part").exists()
    for wafer, extra in ((tmp_path / "plain.npy", []), (src, ["--order", "bucket-major"])):
        assert main([str(wafer), "--out", str(out), "--no-track", *extra]) == 0, capsys.readouterr().err
    assert np.array_equal(np.load(out / "plain" / "height.npy"), np.load(out / "wafer" / "height.npy"))
    assert main([str(src), "--out", str(out), "--order", "laser-first", "--no-track"]) == 2
    assert "--order: unknown 'laser-first'; allowed: laser-major, bucket-major" in capsys.readouterr().err


def test_lasers_in_another_order_than_the_wavelengths_are_refused_naming_the_order_that_fits(tmp_path, capsys):
    """The files hold the lasers as 6.05, 5.5, 5.0, 6.655 µm: read with the default order,
    every pixel fit no height (flagged, after the whole wafer); now refused at once, naming
    the order that fits, and with that order given, the height is the wafer's."""
    from studies.reconstruct import main

    truth = tilted_wafer()
    buckets = physics.quantize(physics.add_noise(physics.render(truth), 0.005), 16)
    np.save(tmp_path / "wafer.npy", buckets.reshape(4, 4, *truth.shape)[[2, 1, 0, 3]].reshape(buckets.shape))
    out = tmp_path / "out"
    assert main([str(tmp_path / "wafer.npy"), "--out", str(out), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "in the order 6.05, 5.5, 5.0, 6.655 µm they fit" in err, err
    assert not (out / "wafer").exists() and not (out / "wafer.part").exists()
    assert main([str(tmp_path / "wafer.npy"), "--out", str(out), "--no-track", "--wavelengths", "6.05,5.5,5.0,6.655"]) == 0
    height, mask = np.load(out / "wafer" / "height.npy"), np.load(out / "wafer" / "mask.npy")
    assert mask.mean() > 0.99 and float(np.sqrt(np.mean((height - truth)[mask] ** 2))) <= 0.05


def test_wavelengths_txt_beside_a_stack_file_sets_the_lasers(tmp_path, capsys):
    """Three lasers (12 buckets) as a multi-page TIFF and as a .npy, wavelengths.txt in their
    folder: both read as three lasers (without the file, 12 pages are refused)."""
    import tifffile

    from studies.reconstruct import main

    waves = (5.0, 5.5, 6.05)
    truth = tilted_wafer() / 3  # within three lasers' alias separation
    buckets = physics.quantize(physics.render(truth, physics.PSIConfig(wavelengths=waves)), 16)
    tifffile.imwrite(tmp_path / "w3.tif", buckets)
    np.save(tmp_path / "w3n.npy", buckets)
    assert main([str(tmp_path / "w3.tif"), "--out", str(tmp_path / "o"), "--no-track"]) == 2
    assert "16 greyscale pages" in capsys.readouterr().err
    (tmp_path / "wavelengths.txt").write_text("5.0 5.5 6.05\n")
    for name in ("w3.tif", "w3n.npy"):
        assert main([str(tmp_path / name), "--out", str(tmp_path / "o"), "--no-track"]) == 0, capsys.readouterr().err
        height = np.load(tmp_path / "o" / Path(name).stem / "height.npy")
        assert float(np.sqrt(np.mean((height - truth) ** 2))) <= 0.05
    assert main([str(tmp_path / "w3.tif"), "--out", str(tmp_path / "o"), "--wavelengths", "5.0,5.5,6.6",
                 "--no-track"]) == 2  # the file and the flag disagree: said, not guessed
    assert "differs from --wavelengths" in capsys.readouterr().err


def test_heights_outside_the_range_are_flagged_and_counted(tmp_path):
    wafer = write_bmp_buckets(tmp_path / "w", tilted_wafer())
    out = _run([wafer, "--out", tmp_path / "out", "--h-min", "0", "--h-max", "35", "--no-track"], tmp_path / "m")
    assert out.returncode == 0, out.stderr
    assert "pixels" in out.stderr and "flagged" in out.stderr and "--h-min" in out.stderr
    flags = np.load(tmp_path / "out" / "w" / "flags.npy")
    mask = np.load(tmp_path / "out" / "w" / "mask.npy")
    assert np.array_equal(mask, flags == 0) and np.count_nonzero(flags == 8) == (~mask).sum() > 0  # no height fits


def test_a_miscalibrated_phase_shifter_is_warned_about_with_its_height_error(tmp_path, capsys):
    """Steps 2 % long: heights ~21 nm off everywhere, no pixel flagged; the command says so
    and the run records it. The project's own synthetic wafers (exact steps) get no warning."""
    import math

    from studies.reconstruct import main

    cfg = physics.PSIConfig(steps=tuple(k * math.pi / 2 * 1.02 for k in range(4)))
    np.save(tmp_path / "skewed.npy", physics.quantize(physics.add_noise(physics.render(tilted_wafer(), cfg), 0.005,
                                                                          cfg=cfg), 16))
    np.save(tmp_path / "exact.npy", physics.quantize(physics.add_noise(physics.render(tilted_wafer()), 0.005), 16))
    assert main([str(tmp_path / "skewed.npy"), "--out", str(tmp_path / "out"), "--no-track"]) == 0
    err = capsys.readouterr().err
    nm = float(re.search(r"about (\d+) nm of systematic error", err).group(1))
    truth = 1000 * float(np.sqrt(np.mean((np.load(tmp_path / "out" / "skewed" / "height.npy") - tilted_wafer()) ** 2)))
    assert "the phase steps are off π/2" in err and abs(nm / truth - 1) < 0.2, (nm, truth, err)
    assert "wavelength looks" not in err  # a shifter's error is not taken for a laser's
    assert main([str(tmp_path / "exact.npy"), "--out", str(tmp_path / "out"), "--no-track"]) == 0
    err = capsys.readouterr().err
    assert "phase steps" not in err and "wavelength looks" not in err


def test_a_laser_off_its_wavelength_is_warned_about_with_its_height_error(tmp_path, capsys):
    """Laser 3 is 0.5 % longer than wavelengths.txt says: every pixel stays valid and the
    heights are ~11 nm off; the command names the laser, the error and the nm it costs."""
    from studies.reconstruct import main

    yy, xx = np.mgrid[0:120, 0:150] / 120
    truth = -20 + 45 * (0.5 * xx + 0.4 * yy)
    true = physics.PSIConfig(wavelengths=(5.0, 5.5, 6.05 * 1.005, 6.655))
    np.save(tmp_path / "w.npy", physics.quantize(physics.add_noise(physics.render(truth, true), 0.005, cfg=true), 16))
    assert main([str(tmp_path / "w.npy"), "--out", str(tmp_path / "out"), "--no-track"]) == 0
    err = capsys.readouterr().err
    height, mask = np.load(tmp_path / "out" / "w" / "height.npy"), np.load(tmp_path / "out" / "w" / "mask.npy")
    measured = 1000 * float(np.sqrt(np.mean((height - truth) ** 2)))
    said = float(re.search(r"puts about (\d+) nm of error", err).group(1))
    assert mask.all() and measured > 5 and "laser 3's wavelength looks +0.50 % off the given 6.05 µm" in err, err
    assert abs(said / measured - 1) < 0.2, (said, measured)


def test_a_saturated_exposure_is_flagged_with_what_to_do(tmp_path):
    """Buckets clipped at 255 bias the phase (6–15 nm at 8 bits) without a high residual:
    each such pixel is flagged and the warning names the cause, and the run counts it."""
    cfg = physics.PSIConfig(A=180.0, B=100.0)
    buckets = physics.quantize(physics.add_noise(physics.render(tilted_wafer(), cfg), 0.005, cfg=cfg), 8)
    np.save(tmp_path / "bright.npy", buckets)
    out = _run([tmp_path / "bright.npy", "--out", tmp_path / "out"], tmp_path / "mlruns")
    assert out.returncode == 0, out.stderr
    assert "a bucket at the camera's maximum count (lower the exposure)" in out.stderr, out.stderr
    clipped = (buckets == 255).any(axis=0)
    assert clipped.mean() > 0.5 and np.array_equal(np.load(tmp_path / "out" / "bright" / "mask.npy"), ~clipped)
    import tifffile

    exported = tifffile.imread(tmp_path / "out" / "bright" / "height.tif")  # the flagged pixels: no data
    assert np.isnan(exported[clipped]).all() and not np.isnan(exported[~clipped]).any()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CPIKAN_MLRUNS", str(tmp_path / "mlruns"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from tracking import store

        c = store.client()
        run = c.search_runs([c.get_experiment_by_name("reconstruct").experiment_id])[0]
        assert run.data.metrics["flagged_saturated"] == clipped.sum()


def _bad(tmp_path, case):
    w = write_bmp_buckets(tmp_path / "w", tilted_wafer(32, 40))
    files = sorted(w.glob("*.bmp"))
    args = [w]
    if case == "missing":
        files[3].unlink()
    elif case == "extra":
        Image.fromarray(np.zeros((32, 40), np.uint8)).save(w / "bucket_99.bmp")
    elif case == "overview":  # the microscope's overview picture beside the buckets
        Image.fromarray(np.zeros((32, 40), np.uint8)).save(w / "overview.png")
    elif case == "size":
        Image.fromarray(np.zeros((32, 41), np.uint8)).save(files[5])
    elif case == "depth":
        files[5].unlink()
        Image.fromarray(np.zeros((32, 40), np.uint16)).save(w / "bucket_05.png")
    elif case == "truncated":
        files[2].write_bytes(files[2].read_bytes()[:200])
    elif case == "colour":  # grey in red and green, blue off by one count at one pixel
        rgb = np.repeat(np.asarray(Image.open(files[4]))[..., None], 3, axis=-1)
        rgb[7, 9, 2] ^= 1
        Image.fromarray(rgb).save(files[4])
    elif case == "transparent":  # grey with alpha, one pixel half transparent
        la = np.stack([np.asarray(Image.open(files[4])), np.full((32, 40), 255, np.uint8)], axis=-1)
        la[3, 5, 1] = 128
        files[4].unlink()
        Image.fromarray(la, mode="LA").save(w / f"{files[4].stem}.png")
    elif case == "npy_shape":
        np.save(tmp_path / "x.npy", np.zeros((12, 8, 8), np.uint16))
        args = [tmp_path / "x.npy"]
    elif case == "npy_dtype":
        np.save(tmp_path / "x.npy", np.zeros((16, 8, 8), np.complex64))
        args = [tmp_path / "x.npy"]
    elif case == "model":
        args = [w, "--model", "0123456789abcdef"]
    elif case == "best_no_store":  # run from a folder that holds no store: said, and none made there
        args = [w, "--model", "best"]
    elif case == "nm":  # a HeNe laser's 632.8 nm written as it is on the laser
        (w / "wavelengths.txt").write_text("632.8 543.5 611.9 594.1\n")
    elif case == "out":
        (tmp_path / "file").write_text("")
        return args, tmp_path / "file" / "sub"
    return args, tmp_path / "out"


@pytest.mark.parametrize("case, message", [
    ("missing", "15 bucket images"), ("extra", "17 bucket images match *.tif|*.tiff|*.png|*.bmp, expected 16 (lasers "
                                                "× buckets, laser-major in name order); --pattern picks them"),
    ("overview", "--pattern '*.bmp' takes the 16 .bmp files, not overview.png"),
    ("size", "all bucket images must have one size"),
    ("depth", "all bucket images must have one bit depth"), ("truncated", "unreadable or truncated"),
    ("colour", "a colour image (blue ≠ red, first at row 7, column 9: red "),
    ("transparent", "a partly transparent image (alpha varies, first at row 3, column 5: grey "), ("npy_shape", "expected (16, H, W)"), ("npy_dtype", "dtype complex64"),
    ("model", "--model 0123456789abcdef: "), ("out", "cannot create it"),
    ("best_no_store", "--model best: no tracking store at "),
    ("nm", "632.8 is not an optical wavelength in µm (0.1 … 30) (in nm? 632.8 nm is 0.6328 µm)"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, case, message):
    args, out_dir = _bad(tmp_path, case)
    res = _run([*args, "--out", out_dir, "--no-track"] if case != "model" else [*args, "--out", out_dir],
               tmp_path / "mlruns")
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr
    assert not out_dir.exists()  # not even an empty folder (it is made once input and model passed)
    if case == "best_no_store":
        assert not (tmp_path / "mlruns").exists()


# --------------------------------------------------------------------------- with a model
@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    """A store holding one tiny psi_pretrain run (weights as safetensors) and one other run."""
    root = tmp_path_factory.mktemp("mlruns")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CPIKAN_MLRUNS", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from studies import psi_pretrain
        from tracking.tracker import Tracker

        pcfg = psi_pretrain.PSIPretrainConfig(steps=2, train_size=64, val_size=64, patch=32, batch_size=2,
                                              curriculum_factors=(), curriculum_steps=())
        with Tracker(psi_pretrain.EXPERIMENT, config=pcfg, entry_point="studies.psi_pretrain:run", seed=0) as run:
            psi_pretrain.run(pcfg, run)
        with Tracker("studies/other") as other:
            other.log_results({"x": 1.0})
    return root, run.run_id, other.run_id


def _model_input(tmp_path, h=96, w=136):
    path = tmp_path / "wafer.npy"
    np.save(path, physics.quantize(physics.render(tilted_wafer(h, w)), 16))
    return path


def test_model_reconstruction_equals_full_image_inference(tmp_path, model_store):
    root, run_id, _ = model_store
    src = _model_input(tmp_path)
    out = _run([src, "--out", tmp_path / "out", "--model", run_id, "--tile", "192", "--no-track"], root)
    assert out.returncode == 0, out.stderr
    height = np.load(tmp_path / "out" / "wafer" / "height.npy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CPIKAN_MLRUNS", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from cpikan.tiling import predict_full
        from studies.reconstruct import ReconstructConfig, height_range
        from tracking import models

        model = models.load_model(run_id)[0]
        model.search_range = height_range(ReconstructConfig())  # as the command sets it
        full = predict_full(model, physics.dequantize(np.load(src)))[0]  # intensity units
    assert np.abs(height - full).max() <= 1e-5 * np.abs(full).max()


def test_a_trained_model_reads_8_and_16_bit_files_of_the_same_light_alike(tmp_path, model_store):
    """psi_pretrain's models learn on intensity units (16-bit counts / 256, as dequantize
    reads them); the command gives them those units whatever the files' bit depth, so the
    same light recorded at 8 and at 16 bits gives the same height."""
    root, run_id, _ = model_store
    b8 = physics.quantize(physics.add_noise(physics.render(tilted_wafer(96, 136)), 0.02), 8)
    np.save(tmp_path / "w8.npy", b8)
    np.save(tmp_path / "w16.npy", b8.astype(np.uint16) * 256)  # the same intensities, 16-bit counts
    heights = []
    for name in ("w8", "w16"):
        out = _run([tmp_path / f"{name}.npy", "--out", tmp_path / "out", "--model", run_id, "--tile", "192",
                    "--no-track"], root)
        assert out.returncode == 0, out.stderr
        heights.append(np.load(tmp_path / "out" / name / "height.npy"))
    assert np.array_equal(heights[0], heights[1])


def test_a_trained_model_searches_the_commands_height_range(tmp_path, model_store):
    """A wafer partly below 0 µm, inside the command's default range (± the alias
    separation): the model's fringe-order search spans that range too, so its height agrees
    with the classical search's on every valid pixel, where its training range [0, 35] µm
    would put the pixels below 0 a whole fringe order (~30 µm) off."""
    root, run_id, _ = model_store
    truth = tilted_wafer(96, 136) - 4.0  # -5.4 … 21.7 µm
    np.save(tmp_path / "low.npy", physics.quantize(physics.render(truth), 16))
    heights = {}
    for model in ("classical", run_id):
        out = _run([tmp_path / "low.npy", "--out", tmp_path / model, "--model", model, "--tile", "192", "--no-track"],
                   root)
        assert out.returncode == 0, out.stderr
        assert ("extrapolated" in out.stderr) == (model == run_id)  # below the 0 … 35 µm it learned on: said
        heights[model] = np.load(tmp_path / model / "low" / "height.npy")
    valid = np.load(tmp_path / "classical" / "low" / "mask.npy")
    assert valid.mean() > 0.99 and (truth[valid] < 0).sum() > 500
    assert np.abs(heights[run_id] - heights["classical"])[valid].max() <= 0.05


def test_a_model_trained_for_the_labs_lasers_reconstructs_their_wafers(tmp_path, monkeypatch):
    """Three lasers: psi_pretrain --set wavelengths=… trains a 12-channel model on wafers
    those lasers tell apart, and the command runs it on a wafer with that wavelengths.txt."""
    from studies import psi_pretrain
    from tracking.tracker import Tracker

    monkeypatch.setenv("CPIKAN_MLRUNS", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    waves = (5.0, 5.5, 6.05)
    pcfg = psi_pretrain.PSIPretrainConfig(steps=2, train_size=64, val_size=64, patch=32, batch_size=2,
                                          curriculum_factors=(), curriculum_steps=(), wavelengths=waves)
    with Tracker(psi_pretrain.EXPERIMENT, config=pcfg, entry_point="studies.psi_pretrain:run", seed=0) as run:
        psi_pretrain.run(pcfg, run)
    truth = tilted_wafer() * 0.8  # -1.1 … 20.6 µm
    np.save(tmp_path / "w3.npy", physics.quantize(physics.render(truth, physics.PSIConfig(wavelengths=waves)), 16))
    (tmp_path / "wavelengths.txt").write_text("5.0 5.5 6.05\n")
    heights = {}
    for model in ("classical", run.run_id):
        out = _run([tmp_path / "w3.npy", "--out", tmp_path / model, "--model", model, "--tile", "192", "--no-track"],
                   tmp_path / "mlruns")
        assert out.returncode == 0, out.stderr
        heights[model] = np.load(tmp_path / model / "w3" / "height.npy")
    assert float(np.sqrt(np.mean((heights["classical"] - truth) ** 2))) <= 0.05
    assert np.abs(heights[run.run_id] - heights["classical"]).max() <= 0.05
    # --model best picks the best run for the wafer's lasers, and says when there is none
    out = _run([tmp_path / "w3.npy", "--out", tmp_path / "best", "--model", "best", "--tile", "192", "--no-track"],
               tmp_path / "mlruns")
    assert out.returncode == 0, out.stderr
    assert np.array_equal(np.load(tmp_path / "best" / "w3" / "height.npy"), heights[run.run_id])
    (tmp_path / "four").mkdir()
    np.save(tmp_path / "four" / "w4.npy", physics.quantize(physics.render(truth), 16))
    out = _run([tmp_path / "four" / "w4.npy", "--out", tmp_path / "best4", "--model", "best", "--no-track"],
               tmp_path / "mlruns")
    assert out.returncode == 2 and "no psi_pretrain run trained for wavelengths (5.0, 5.5, 6.05, 6.655)" in out.stderr


def test_two_processes_under_torchrun_write_the_same_bytes(tmp_path, model_store):
    root, run_id, _ = model_store
    src = _model_input(tmp_path, 200, 136)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CPIKAN_MLRUNS=str(root), PYTHONPATH=str(ROOT))
    for n in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
               "-m", "studies.reconstruct", str(src), "--out", str(tmp_path / f"out{n}"), "--model", run_id,
               "--tile", "160", "--no-track"]
        # one thread per process in both: oneDNN rounds differently with another thread count
        res = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("→") == 1  # the leader reports, once
    for name in ("height.npy", "mask.npy", "height.tif"):
        assert (tmp_path / "out1" / "wafer" / name).read_bytes() == (tmp_path / "out2" / "wafer" / name).read_bytes()


@pytest.mark.parametrize("case, message", [
    ("tile", "--tile: 64 px leaves no core"), ("channels", "the model expects 16 input channels"),
    ("float counts", "float intensities reach"), ("float tiff counts", "float intensities reach"),
    ("other lasers", "trained for wavelengths (5.0, 5.5, 6.05, 6.655)"),
    ("not_psi", "not a PSI model run"),
])
def test_bad_model_input_is_one_line_exit_2(tmp_path, model_store, case, message):
    root, run_id, other_id = model_store
    src = _model_input(tmp_path, 32, 40)
    args = [src, "--out", tmp_path / "out", "--model", run_id, "--no-track"]
    if case == "tile":
        args += ["--tile", "64"]
    elif case == "channels":
        np.save(src, np.zeros((12, 32, 40), np.uint16))
        args += ["--wavelengths", "5.0,5.5,6.05"]
    elif case == "not_psi":
        args[4] = other_id
    elif case == "other lasers":  # as many lasers, other wavelengths: the model's fringe orders would be wrong
        args += ["--wavelengths", "5.1,5.6,6.1,6.7"]
    elif case == "float counts":  # 16-bit counts saved as floats: 256× the units the model learned on
        np.save(src, np.load(src).astype(np.float32))
    elif case == "float tiff counts":  # the same as ImageJ's 32-bit TIFFs, one per bucket
        import tifffile

        (tmp_path / "w").mkdir()
        for i, b in enumerate(np.load(src)):
            tifffile.imwrite(tmp_path / "w" / f"b{i:02d}.tif", b.astype(np.float32))
        args[0] = tmp_path / "w"
    res = _run(args, root)
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- the user's own model
USER_MODEL = '''
import torch
import torch.nn.functional as F
from torch import nn


class TwoHeadUNet(nn.Module):
    """Written as public code writes it: inputs scaled by 1/65535, a pooled level whose
    skip is aligned by interpolate(size=...), BatchNorm, two outputs (height, log-variance)."""

    def __init__(self, width=8, corners=False):
        super().__init__()
        self.corners = corners
        self.enc1 = nn.Sequential(nn.Conv2d(16, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.dec = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, 2, 1)

    def forward(self, x):
        a = self.enc1(x / 65535.0)
        b = self.enc2(F.max_pool2d(a, 2))
        if self.corners:
            b = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=True)
        b = F.interpolate(b, size=a.shape[-2:], mode="nearest")
        return self.head(self.dec(torch.cat([a, b], 1)))


def build():
    return TwoHeadUNet()


def build_wide():
    return TwoHeadUNet(width=12)


def build_corners():
    return TwoHeadUNet(corners=True)


def build_circular():  # periodic padding: the wafer's far side wraps into its edges
    model = TwoHeadUNet()
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.padding != (0, 0):
            m.padding_mode = "circular"
    return model


class WithAux(TwoHeadUNet):
    def forward(self, x):  # torchvision's segmentation models answer a dict like this one
        y = super().forward(x)
        return {"out": y[:, :1], "aux": y[:, 1:]}


def build_aux():
    return WithAux()


class Lit(nn.Module):  # a Lightning module holding the network: its state dict says net.…
    def __init__(self):
        super().__init__()
        self.net = TwoHeadUNet()
'''


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """A model file outside the project and its weights, saved the way DDP training saves
    them (``module.`` prefix), with BatchNorm statistics that are not the defaults."""
    import importlib.util

    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("mylab")
    (root / "unet.py").write_text(USER_MODEL)
    spec = importlib.util.spec_from_file_location("mylab_unet_for_test", root / "unet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(3)
    model = mod.build()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors"))
    torch.save(model.state_dict(), root / "w.pt")
    return root, model.eval()


def test_your_own_model_from_a_file_reconstructs_exactly_and_is_recorded(tmp_path, user_model):
    import mlflow

    from cpikan.tiling import predict_full

    root, model = user_model
    src = _model_input(tmp_path, 200, 136)
    res = _run_process([src, "--out", tmp_path / "out", "--model", f"{root / 'unet.py'}:build",
                "--weights", root / "w.safetensors", "--tile", "96"], tmp_path / "mlruns")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out" / "wafer"
    full = predict_full(model, np.load(src))
    channels, height = np.load(out / "channels.npy"), np.load(out / "height.npy")
    assert channels.shape == (2, 200, 136)  # both outputs kept; channel 0 is the height
    assert np.abs(channels - full).max() <= 1e-5 * np.abs(full).max()
    assert np.array_equal(height, channels[0])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["reconstruct"], output_format="list")
    recorded = json.loads(run.data.tags["cpikan.datasets"])
    for name in ("unet.py", "w.safetensors"):
        assert recorded[name]["sha256"] == hashlib.sha256((root / name).read_bytes()).hexdigest()
    assert run.data.metrics["tile"] == 96 and run.data.tags["out_channels"] == "2"
    # replayed by its ID: the same wafer through the same model, every result the same ...
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CPIKAN_MLRUNS=str(tmp_path / "mlruns"), PYTHONPATH=str(ROOT))

    def replay():
        return subprocess.run([sys.executable, "-m", "tracking.replay", run.info.run_id], capture_output=True,
                              text=True, env=env, cwd=ROOT)

    res = replay()
    assert res.returncode == 0 and "reproduced run" in res.stdout, res.stdout + res.stderr
    assert "height_rms_um" in res.stdout and "DIFFERENT" not in res.stdout
    # ... and refused, naming the file, once the weights are not the ones it used
    weights = (root / "w.safetensors").read_bytes()
    try:
        (root / "w.safetensors").write_bytes(weights[:-4] + bytes(4))
        res = replay()
    finally:
        (root / "w.safetensors").write_bytes(weights)
    assert res.returncode == 2 and "'w.safetensors'" in res.stderr and "changed" in res.stderr, res.stderr


def test_weights_under_any_wrappers_prefix_load(user_model):
    """A Lightning module's net.…, DDP's module.… over it, torch's AveragedModel (EMA:
    module.… beside its n_averaged): the keys under the prefix are the model's, so it is
    dropped; a state dict holding two networks (net.…, ema.…) is refused, not guessed."""
    import importlib.util

    import torch
    from safetensors.torch import save_file

    from cpikan.tiling import factory

    root, model = user_model
    spec = importlib.util.spec_from_file_location("mylab_unet_lit", root / "unet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lit = mod.Lit()
    lit.net.load_state_dict(model.state_dict())
    save_file({f"module.{k}": v.contiguous() for k, v in lit.state_dict().items()}, str(root / "lit.safetensors"))
    loaded = factory.build(f"{root / 'unet.py'}:build", root / "lit.safetensors")
    x = torch.rand(1, 16, 32, 32)
    assert torch.equal(loaded(x), model(x))
    both = {**{f"net.{k}": v for k, v in model.state_dict().items()}, **{f"ema.{k}": v.clone() for k, v in model.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in both.items()}, str(root / "two.safetensors"))
    with pytest.raises(ValueError, match=r"holds the network 2 times \(under ema\., net\.\); save the copy"):
        factory.build(f"{root / 'unet.py'}:build", root / "two.safetensors")
    ema = torch.optim.swa_utils.AveragedModel(model)  # weights as averaged during training
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(root / "ema.safetensors"))
    assert "n_averaged" in ema.state_dict()
    loaded = factory.build(f"{root / 'unet.py'}:build", root / "ema.safetensors")
    assert torch.equal(loaded(x), ema.module.eval()(x))
    extra = {**{k: v.contiguous() for k, v in model.state_dict().items()}, "loss.weight": torch.ones(3)}
    save_file(extra, str(root / "extra.safetensors"))  # keys beside the model's with no prefix: not guessed
    with pytest.raises(ValueError, match="does not fit TwoHeadUNet: unexpected loss.weight"):
        factory.build(f"{root / 'unet.py'}:build", root / "extra.safetensors")


HELPER = """from torch import nn


def conv(ci, co):
    return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), nn.ReLU())
"""


def test_a_model_file_imports_as_its_own_script_would_and_all_its_files_are_recorded(tmp_path):
    """A file in a package uses relative and absolute imports of it; a lone file imports
    its sibling. Both build, and every source file of the user's the import brought in is
    what the run records: a change to a helper module makes a replay refuse."""
    import mlflow
    import torch

    from cpikan import refs
    from cpikan.tiling import factory

    pkg = tmp_path / "code" / "labnets_pkg" / "models"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "blocks.py").write_text(HELPER)
    (pkg / "unet.py").write_text("from torch import nn\nfrom .blocks import conv\nfrom labnets_pkg.models import blocks\n\n"
                                 "def build():\n    return nn.Sequential(conv(16, 4), blocks.conv(4, 4), nn.Conv2d(4, 1, 1))\n")
    solo = tmp_path / "solo"
    solo.mkdir()
    (solo / "solo_helpers.py").write_text(HELPER)
    (solo / "net.py").write_text("from torch import nn\nfrom solo_helpers import conv\n\n"
                                 "def build():\n    return nn.Sequential(conv(16, 4), nn.Conv2d(4, 1, 1))\n")
    packaged = f"{pkg / 'unet.py'}:build"
    assert factory.build(packaged)(torch.rand(1, 16, 8, 8)).shape == (1, 1, 8, 8)
    assert list(refs.local_files(packaged)) == ["labnets_pkg/__init__.py", "labnets_pkg/models/__init__.py",
                                                   "labnets_pkg/models/blocks.py", "labnets_pkg/models/unet.py"]
    src = _model_input(tmp_path, 40, 48)
    # from the model's own folder, as most run it: torch.ops' and torch.classes' relative
    # __file__ ('_ops.py') resolved into it, and hashing that file crashed the command
    res = _run_process([src, "--out", tmp_path / "out", "--model", "net.py:build"], tmp_path / "mlruns", cwd=solo)
    assert res.returncode == 0, res.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["reconstruct"], output_format="list")
    recorded = json.loads(run.data.tags["cpikan.datasets"])
    assert {"net.py", "solo_helpers.py"} == {k for k in recorded if k.endswith(".py")}, recorded
    assert recorded["solo_helpers.py"]["sha256"] == hashlib.sha256((solo / "solo_helpers.py").read_bytes()).hexdigest()
    assert run.data.params["model"] == f"{solo / 'net.py'}:build"  # as typed, 'net.py' built nothing elsewhere
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(CPIKAN_MLRUNS=str(tmp_path / "mlruns"), PYTHONPATH=str(ROOT))
    replay = subprocess.run([sys.executable, "-m", "tracking.replay", run.info.run_id], capture_output=True, text=True,
                            env=env, cwd=ROOT)  # from another folder
    assert replay.returncode == 0 and "reproduced" in replay.stdout, replay.stdout + replay.stderr
    (solo / "solo_helpers.py").write_text(HELPER.replace("padding=1", "padding=1, bias=False"))
    replay = subprocess.run([sys.executable, "-m", "tracking.replay", run.info.run_id], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    assert replay.returncode == 2 and "'solo_helpers.py'" in replay.stderr and "changed" in replay.stderr, replay.stderr


def test_a_class_named_with_its_arguments_is_built_as_the_factory_would(tmp_path, user_model):
    """``unet.py:TwoHeadUNet(width=12)`` is ``build_wide()``: a network class that needs
    arguments (MONAI's, say) runs without a wrapper file; the run records the call."""
    import torch
    from safetensors.torch import save_file

    from cpikan.tiling import factory

    root, _ = user_model
    torch.manual_seed(5)
    wide = factory.build(f"{root / 'unet.py'}:build_wide")
    save_file(wide.state_dict(), str(tmp_path / "wide.safetensors"))
    named = factory.build(f"{root / 'unet.py'}:TwoHeadUNet(width=12)", tmp_path / "wide.safetensors")
    x = torch.rand(1, 16, 24, 24)
    assert torch.equal(named(x), wide(x))
    with pytest.raises(ValueError, match=r"TwoHeadUNet\(8, False, 3\) failed \(TypeError"):
        factory.build(f"{root / 'unet.py'}:TwoHeadUNet(8, False, 3)")


def test_a_model_built_without_weights_is_the_same_every_time(user_model):
    """A factory that initialises at random (no --weights: its own, or none) builds the same
    network every time, so a replay gives the same heights; torch's generator is left as it was."""
    import torch

    from cpikan.tiling import factory

    root, _ = user_model
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second = (factory.build(f"{root / 'unet.py'}:build_wide").state_dict() for _ in range(2))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("case, message", [
    ("wrong weights", "--weights: "), ("pickle", "looks like a pickle"), ("no such callable", "cannot be imported"),
    ("not equivariant", "not shift-equivariant"), ("weights without a factory", "--weights: only with"),
    ("circular padding", "output at the wafer's edges depends on its far side (suspected: circular padding (enc1.0"),
    ("bad mode", "--mode: unknown 'blend'"), ("dict output", "returns a dict ('out': (1, 1, 64, 64), 'aux'"),
    ("tiny budget", "--max-memory 1KB: the smallest tile with the"),
    ("non-literal argument", "arguments must be literals"),
    ("short overlap", "--overlap: crop mode needs overlap/2 ≥ the receptive-field radius"),
])
def test_bad_own_model_input_is_one_line_exit_2(tmp_path, user_model, capsys, case, message):
    from studies.reconstruct import main

    root, _ = user_model
    src = _model_input(tmp_path, 32, 40)
    model, weights, extra = f"{root / 'unet.py'}:build", root / "w.safetensors", []
    if case == "wrong weights":
        model = f"{root / 'unet.py'}:build_wide"
    elif case == "pickle":
        weights = root / "w.pt"
    elif case == "no such callable":
        model = f"{root / 'unet.py'}:make_unet"
    elif case == "not equivariant":
        model = f"{root / 'unet.py'}:build_corners"
    elif case == "circular padding":
        model = f"{root / 'unet.py'}:build_circular"
    elif case == "weights without a factory":
        model = "classical"
    elif case == "bad mode":
        extra = ["--mode", "blend"]
    elif case == "dict output":
        model = f"{root / 'unet.py'}:build_aux"
    elif case == "non-literal argument":  # read, never evaluated
        model = f"{root / 'unet.py'}:TwoHeadUNet(width=__import__('os').getpid())"
    elif case == "tiny budget":  # tiles of a few pixels would take hours and still pass the budget
        extra = ["--max-memory", "1KB"]
    elif case == "short overlap":  # seams: refused before any wafer is read
        extra = ["--overlap", "0", "--tile", "32"]
    code = main([str(src), "--out", str(tmp_path / "out"), "--model", model, "--weights", str(weights),
                 "--no-track", *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    if case in ("not equivariant", "circular padding"):  # the way out it names works, and says it is not exact
        code = main([str(src), "--out", str(tmp_path / "out"), "--model", model, "--weights", str(weights),
                     "--no-track", "--mode", "hann", "--tile", "32"])
        assert code == 0 and "µm apart on a crop of this wafer" in capsys.readouterr().err


LOG_COUNTS = '''
import torch
from torch import nn


class LogCounts(nn.Module):
    """The log of the counts first: finite wherever there is light."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.log(x))
'''


def test_a_model_that_takes_the_log_of_the_counts_runs_and_its_nan_pixels_are_flagged(tmp_path, capsys):
    """Its NaN on the probe's negative pixels once read as 'randomness in forward' (NaN ≠ NaN),
    so it was refused; and where a wafer's dark spot gives it log 0, the mask must not call
    the NaN or infinite height valid."""
    from cpikan.psi.classical import LOW_CONTRAST, MODEL_NOT_FINITE
    from studies.reconstruct import main

    (tmp_path / "logcounts.py").write_text(LOG_COUNTS)
    buckets = physics.quantize(physics.render(tilted_wafer(96, 136)), 16)
    buckets[:, 40:50, 60:80] = 0  # a dark spot
    np.save(tmp_path / "wafer.npy", buckets)
    code = main([str(tmp_path / "wafer.npy"), "--out", str(tmp_path / "out"), "--model",
                 f"{tmp_path / 'logcounts.py'}:LogCounts", "--no-track"])
    err = capsys.readouterr().err
    assert code == 0, err
    out = tmp_path / "out" / "wafer"
    height, mask, flags = (np.load(out / f"{n}.npy") for n in ("height", "mask", "flags"))
    assert np.isfinite(height[mask]).all()
    assert np.count_nonzero(flags == LOW_CONTRAST) == 200  # the spot itself: no fringes
    ring = flags == MODEL_NOT_FINITE  # its neighbours within the 3 × 3 kernel: fringes, but log 0 in reach
    assert np.count_nonzero(ring) == 12 * 22 - 200 and not np.isfinite(height[ring]).any()
    assert "64 the model's height is NaN or infinite" in err and "200 no fringes there" in err, err


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """A memmap's page written on a full disk killed the command with SIGBUS (exit 135, no
    message, the .part left filling the disk, the run RUNNING): the outputs' blocks are now
    reserved first, so a full disk is said at the start."""
    import errno

    from cpikan.memory import new_memmap
    from studies.reconstruct import main

    arr = new_memmap(tmp_path / "reserved.npy", np.float32, (512, 1024))  # 2 MB, not a sparse file
    assert os.stat(tmp_path / "reserved.npy").st_blocks * 512 >= arr.nbytes
    del arr

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    np.save(tmp_path / "wafer.npy", physics.quantize(physics.render(tilted_wafer()), 16))
    assert main([str(tmp_path / "wafer.npy"), "--out", str(tmp_path / "out"), "--no-track"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no space left on" in err and "wafer was not written" in err, err
    assert not (tmp_path / "out").exists()
    # a plain file's short write on a full disk (numpy's tofile under tifffile) has no errno
    import shutil
    from collections import namedtuple

    from cpikan.psi import io

    monkeypatch.undo()

    def short_write(*args, **kwargs):
        raise OSError("78000 requested and 41916 written")

    monkeypatch.setattr(io, "write_tiff", short_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("Usage", "total used free")(1, 1, 0))
    assert main([str(tmp_path / "wafer.npy"), "--out", str(tmp_path / "out"), "--no-track"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "(78000 requested and 41916 written); wafer was not" in err, err
    assert not (tmp_path / "out").exists()


def test_a_second_command_on_the_same_wafer_and_out_is_refused(tmp_path, capsys):
    """Two commands on one wafer into one --out shared its .part folder: the second deleted
    the first's, and the first published the second's half-written files as its own."""
    from studies.reconstruct import lock_wafer, main

    np.save(tmp_path / "wafer.npy", physics.quantize(physics.render(tilted_wafer()), 16))
    out = tmp_path / "out"
    out.mkdir()
    args = [str(tmp_path / "wafer.npy"), "--out", str(out), "--no-track"]
    with lock_wafer(out, "wafer"):  # the other command, running
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "wafer is being written into" in err and len(err.strip().splitlines()) == 1, err
        assert [p.name for p in out.iterdir()] == [".wafer.lock"]  # nothing of ours
    assert main(args) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["wafer"]  # no lock left behind


def test_ctrl_c_keeps_the_wafers_done_and_nothing_of_the_one_in_progress(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the second wafer: the first stays, the second leaves no .part and no lock,
    and the message says where the done ones are; during the only wafer, the --out this
    command made is removed and the message does not point at it."""
    from studies import reconstruct

    for name in ("first", "second"):
        np.save(tmp_path / f"{name}.npy", physics.quantize(physics.render(tilted_wafer(24, 32)), 16))
    track = reconstruct.track

    def interrupted_on_second(src, *args, **kwargs):
        if src.stem == "second":
            raise KeyboardInterrupt
        return track(src, *args, **kwargs)

    monkeypatch.setattr(reconstruct, "track", interrupted_on_second)
    both = [str(tmp_path / "first.npy"), str(tmp_path / "second.npy")]
    assert reconstruct.main([*both, "--out", str(tmp_path / "out"), "--no-track"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == f"interrupted: the wafer in progress was not written (those done stay in {tmp_path / 'out'})"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["first"]
    assert reconstruct.main([both[1], "--out", str(tmp_path / "new"), "--no-track"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted: the wafer in progress was not written"
    assert not (tmp_path / "new").exists()
