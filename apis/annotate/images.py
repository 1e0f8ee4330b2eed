"""What the annotation page shows of a question: the region around the instance's box, with context.

Coordinates follow :mod:`apis.data.coords`: boxes are continuous ``xyxy`` in the original image, the point
``(x, y)`` is an integer pixel index whose centre is ``(x + 0.5, y + 0.5)``. The crop is an integer pixel
window ``[cx, cx + width) x [cy, cy + height)`` of the original image, sent at its own resolution; the page
scales it and draws the box and the crosshair over it in crop pixel coordinates.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path

from PIL import Image

from apis.data.coco import CocoDataset, image_to_rgb
from apis.data.questions import Question, QuestionError


class ImageOutsideRoot(QuestionError):
    """The dataset names an image file outside its image folder: it is never served."""


class QuestionImages:
    """Crops of a dataset's images around its instances' boxes.

    Args:
        dataset: the run's training set; only its images are ever read, by image id.
        context: margin added on each side of the box, as a fraction of the box's longer side.
        min_context_px: the margin is at least this many pixels (small instances need room to be judged).
    """

    def __init__(self, dataset: CocoDataset, context: float = 0.5, min_context_px: int = 16):
        self.dataset = dataset
        self.context = context
        self.min_context_px = min_context_px
        self._root = Path(dataset.image_root).resolve()
        self._class_names = {c["id"]: str(c.get("name", c["id"])) for c in dataset.categories}
        self._crop_png = lru_cache(maxsize=512)(self._render)

    def crop_window(self, question: Question) -> tuple[int, int, int, int]:
        """``(cx, cy, width, height)``: the box of ``question``'s instance with context, clipped to the image."""
        record = self.dataset.image(question.image_id)
        x0, y0, x1, y1 = self.dataset.instance(question.ann_id).bbox_xyxy
        margin = max(self.context * max(x1 - x0, y1 - y0), self.min_context_px)
        cx, cy = max(0, math.floor(x0 - margin)), max(0, math.floor(y0 - margin))
        ex, ey = min(record.width, math.ceil(x1 + margin)), min(record.height, math.ceil(y1 + margin))
        return cx, cy, ex - cx, ey - cy

    def describe(self, question: Question) -> dict:
        """The question as the page needs it (JSON-ready)."""
        instance = self.dataset.instance(question.ann_id)
        return {
            "id": question.id, "step": question.step, "position": question.position, "ann_id": question.ann_id,
            "image_id": question.image_id, "category": self._class_names.get(instance.category_id, "?"),
            "point": [question.x, question.y], "box": list(instance.bbox_xyxy),
            "crop": list(self.crop_window(question)), "image_url": f"api/questions/{question.id}/image",
            "answers_wanted": question.answers_wanted,
        }

    def crop_png(self, question: Question) -> bytes:
        """PNG bytes of the question's crop (cached)."""
        return self._crop_png(question.image_id, self.crop_window(question))

    def _render(self, image_id: int, window: tuple[int, int, int, int]) -> bytes:
        record = self.dataset.image(image_id)
        path = Path(record.path).resolve()
        if not path.is_relative_to(self._root):
            raise ImageOutsideRoot(f"image {image_id} ({record.file_name}) lies outside the image folder "
                                   f"{self._root}; it is not served")
        cx, cy, width, height = window
        with Image.open(path) as image:
            crop = Image.fromarray(image_to_rgb(image)).crop((cx, cy, cx + width, cy + height))
        out = io.BytesIO()
        crop.save(out, format="PNG", compress_level=1)
        return out.getvalue()
