"""The whole detector (model -> loss -> post-processing) learns: a small preset overfits a few real
BCCD images on the CPU and its decoded detections land on the ground truth."""
import time
import xml.etree.ElementTree as ET

import numpy as np
import torch
from PIL import Image

from dsod import build_model
from dsod.config import PIXEL_MEAN_BGR
from dsod.geometry.boxes import box_iou
from dsod.inference.postprocess.detection_output import PostProcessor
from dsod.model.loss import MultiBoxLoss

CLASSES = ["RBC", "WBC", "Platelets"]
IDS = ["BloodImage_00001", "BloodImage_00003", "BloodImage_00004", "BloodImage_00005"]


def _load(root, image_id, size):
    img = Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB")
    w, h = img.size
    arr = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]  # BGR
    x = torch.from_numpy(arr - np.array(PIXEL_MEAN_BGR, dtype=np.float32)).permute(2, 0, 1)
    boxes, labels = [], []
    for obj in ET.parse(root / "Annotations" / f"{image_id}.xml").findall("object"):
        bb = obj.find("bndbox")
        x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x2 > x1 and y2 > y1:
            boxes.append([x1 / w, y1 / h, x2 / w, y2 / h])
            labels.append(CLASSES.index(obj.find("name").text))
    return x, {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}


def test_small_preset_overfits_real_bccd_images(shared_data):
    torch.manual_seed(0)
    root = shared_data / "bccd"
    model = build_model("dsod-nano", num_classes=len(CLASSES) + 1, bn_decay=0.9)
    size = model.config.image_size
    samples = [_load(root, i, size) for i in IDS]
    images = torch.stack([s[0] for s in samples])
    targets = [s[1] for s in samples]
    criterion = MultiBoxLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    t0 = time.time()
    for step in range(300):
        out = model(images)
        loss = criterion(out.bbox_regression, out.cls_logits, targets, model.anchors_cxcywh)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first / 8, f"loss {first:.2f} -> {last:.2f} in {time.time() - t0:.0f}s"

    model.eval()
    with torch.no_grad():
        out = model(images)
    dets = PostProcessor()(out.bbox_regression, out.cls_logits, model.anchors_cxcywh)
    recalls = []
    for det, tgt in zip(dets, targets):
        keep = det["scores"] > 0.3
        iou = box_iou(tgt["boxes"], det["boxes"][keep])
        same = tgt["labels"][:, None] == det["labels"][keep][None, :]
        hit = ((iou >= 0.5) & same).any(dim=1)
        recalls.append(hit.float().mean().item())
    assert np.mean(recalls) > 0.8, recalls
