#!/usr/bin/env python3
"""Builds tests/fixtures/datasets/ (small real-image datasets in the real layouts) from
../shared/data (COCO128, DAVIS-2016). Generation only: needs Pillow and numpy
(`pip install --target /tmp/pil pillow`, then `PYTHONPATH=/tmp/pil .venv/bin/python
scripts/make_fixtures.py`); the tests read the committed files and need neither.
"""
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "tests", "fixtures", "datasets")
LONG = 160
QUALITY = 80

COCO = os.path.join(SHARED, "coco128")
VOC_OF_COCO = {
    "airplane": 1, "bicycle": 2, "bird": 3, "boat": 4, "bottle": 5, "bus": 6, "car": 7,
    "cat": 8, "chair": 9, "cow": 10, "dining table": 11, "dog": 12, "horse": 13,
    "motorcycle": 14, "person": 15, "potted plant": 16, "sheep": 17, "couch": 18,
    "train": 19, "tv": 20,
}
# VOC: val holds dog (12) x3 and person (15) x3 (fold 2 has 1-shot episodes), bicycle (2) x1.
VOC_VAL = ["000000000042", "000000000394", "000000000036", "000000000165", "000000000074"]
VOC_TRAIN = ["000000000081", "000000000443", "000000000143"]
COCO_IMAGES = ["000000000049", "000000000071", "000000000086", "000000000110",
               "000000000260", "000000000471"]
DAVIS_SEQ = "cows"
DAVIS_FRAMES = 5


def new_size(w, h):
    s = LONG / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def save_jpeg(src, dst, size):
    im = Image.open(src).convert("RGB").resize(size, Image.LANCZOS)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    im.save(dst, quality=QUALITY, optimize=True)


def nearest(arr, size):
    return np.array(Image.fromarray(arr).resize(size, Image.NEAREST))


def voc_palette():
    pal = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def boundary_band(lab):
    """255 where the 3x3 neighbourhood holds another label (VOC's void band)."""
    h, w = lab.shape
    p = np.pad(lab, 1, mode="edge")
    band = np.zeros_like(lab, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            band |= p[dy:dy + h, dx:dx + w] != lab
    out = lab.copy()
    out[band] = 255
    return out


def categories():
    with open(os.path.join(COCO, "annotations", "instances_train2017.json")) as f:
        return json.load(f)


def make_voc(inst):
    root = os.path.join(OUT, "voc2012")
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    lut = np.zeros(256, np.uint8)
    for cid, name in cats.items():
        lut[cid] = VOC_OF_COCO.get(name, 0)
    pal = voc_palette()
    for name in VOC_VAL + VOC_TRAIN:
        src = os.path.join(COCO, "images", "train2017", name + ".jpg")
        w, h = Image.open(src).size
        size = new_size(w, h)
        save_jpeg(src, os.path.join(root, "JPEGImages", name + ".jpg"), size)
        m = np.array(Image.open(os.path.join(COCO, "masks", "train2017", name + ".png")))
        lab = boundary_band(lut[nearest(m, size)])
        for d in ("SegmentationClass", "SegmentationClassAug"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        p = Image.fromarray(lab, mode="P")
        p.putpalette(pal)
        p.save(os.path.join(root, "SegmentationClass", name + ".png"), optimize=True)
        Image.fromarray(lab, mode="L").save(
            os.path.join(root, "SegmentationClassAug", name + ".png"), optimize=True)
    sets = os.path.join(root, "ImageSets", "Segmentation")
    os.makedirs(sets, exist_ok=True)
    for list_name, names in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        with open(os.path.join(sets, list_name + ".txt"), "w") as f:
            f.write("".join(n + "\n" for n in names))


def make_coco(inst):
    root = os.path.join(OUT, "coco")
    ids = {int(n) for n in COCO_IMAGES}
    images, annotations, dropped = [], [], 0
    for im in inst["images"]:
        if im["id"] not in ids:
            continue
        name = "%012d" % im["id"]
        src = os.path.join(COCO, "images", "train2017", name + ".jpg")
        w, h = Image.open(src).size
        assert (w, h) == (im["width"], im["height"])
        size = new_size(w, h)
        sx, sy = size[0] / w, size[1] / h
        save_jpeg(src, os.path.join(root, "images", "train2017", name + ".jpg"), size)
        m = np.array(Image.open(os.path.join(COCO, "masks", "train2017", name + ".png")))
        os.makedirs(os.path.join(root, "masks", "train2017"), exist_ok=True)
        Image.fromarray(nearest(m, size), mode="L").save(
            os.path.join(root, "masks", "train2017", name + ".png"), optimize=True)
        im = dict(im, width=size[0], height=size[1])
        images.append(im)
        for a in inst["annotations"]:
            if a["image_id"] != im["id"]:
                continue
            seg = a["segmentation"]
            if not isinstance(seg, list):
                dropped += 1  # RLE (crowd) regions are not rescaled
                continue
            seg = [[round(v * (sx if i % 2 == 0 else sy), 2) for i, v in enumerate(poly)]
                   for poly in seg]
            x, y, bw, bh = a["bbox"]
            annotations.append(dict(
                a, segmentation=seg,
                bbox=[round(x * sx, 2), round(y * sy, 2), round(bw * sx, 2), round(bh * sy, 2)],
                area=round(a["area"] * sx * sy, 2)))
    out = {k: inst[k] for k in ("info", "licenses") if k in inst}
    out.update(images=images, annotations=annotations, categories=inst["categories"])
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", "instances_train2017.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"coco: {len(images)} images, {len(annotations)} polygon annotations, "
          f"{dropped} RLE annotations dropped")


def make_davis():
    src = os.path.join(SHARED, "davis2016")
    root = os.path.join(OUT, "davis")
    for k in range(DAVIS_FRAMES):
        f = "%05d" % k
        jpg = os.path.join(src, "JPEGImages", "480p", DAVIS_SEQ, f + ".jpg")
        w, h = Image.open(jpg).size
        size = new_size(w, h)
        save_jpeg(jpg, os.path.join(root, "JPEGImages", "480p", DAVIS_SEQ, f + ".jpg"), size)
        ann = Image.open(os.path.join(src, "Annotations", "480p", DAVIS_SEQ, f + ".png"))
        arr = nearest(np.array(ann), size)
        dst = os.path.join(root, "Annotations", "480p", DAVIS_SEQ, f + ".png")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        Image.fromarray(arr, mode=ann.mode if ann.mode in ("L", "P") else "L").save(
            dst, optimize=True)
    with open(os.path.join(root, "sequences.txt"), "w") as f:
        f.write(DAVIS_SEQ + "\n")


def main():
    for d in ("voc2012", "coco", "davis"):
        shutil.rmtree(os.path.join(OUT, d), ignore_errors=True)
    inst = categories()
    make_voc(inst)
    make_coco(inst)
    make_davis()
    total = 0
    for dirpath, _, files in os.walk(OUT):
        for fn in files:
            p = os.path.join(dirpath, fn)
            n = os.path.getsize(p)
            total += n
            if fn.endswith(".jpg") and n > 20_000:
                sys.exit(f"{p}: {n} bytes > 20 KB")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
