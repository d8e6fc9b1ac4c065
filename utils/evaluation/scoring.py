"""The COCO caption metrics of captions against their references, as pycocoevalcap's COCOEvalCap computes
them: PTB tokenization of both sides, then Bleu(4), Meteor, Rouge (ROUGE-L) and Cider (CIDEr-D).

SPICE is left out: pycocoevalcap downloads Stanford CoreNLP's models for it at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from utils.evaluation.files import caption_problem
from utils.evaluation.pycoco import meteor_score, running_meteor, tokenize
from utils.support.errors import CaptionError
from utils.support.text import shortened

# The corpus metrics, named as pycocoevalcap names them, in its order.
METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


@dataclass(frozen=True)
class Scores:
    corpus: dict[str, float]  # each of METRICS, on pycocoevalcap's scale (0 to 1; CIDEr up to 10)
    per_image: dict[str, dict[str, float]]  # image -> each of METRICS for its caption alone

    @property
    def images(self) -> int:
        return len(self.per_image)


def score(pairs: Mapping[str, tuple[str, Sequence[str]]]) -> Scores:
    """Score each image's caption (``pairs``: image -> (caption, its reference captions)). Needs
    pycocoevalcap and Java (require_evaluation says so first). CIDEr-D weighs n-grams by how many
    images' references hold them, so an image's scores depend on the others scored with it."""
    if not pairs:
        raise CaptionError("no image has both a caption and references: nothing to score")
    for image, (caption, references) in pairs.items():
        if not references:
            raise CaptionError(f"{shortened(image)} has no reference captions")
        for text in (caption, *references):
            if (problem := caption_problem(text)) is not None:
                raise CaptionError(f"{shortened(image)}: {problem}")

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    # Meteor's Java loads its paraphrase table (several seconds) while the tokenizer runs.
    with running_meteor() as meteor:
        gts = tokenize({image: list(references) for image, (_, references) in pairs.items()})
        res = tokenize({image: [caption] for image, (caption, _) in pairs.items()})
        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)  # verbose=1 prints to our stdout
        meteor_all, meteor_each = meteor_score(meteor, gts, res)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)

    each = [*bleu_each, meteor_each, rouge_each, cider_each]
    corpus = dict(zip(METRICS, (float(v) for v in [*bleu, meteor_all, rouge, cider]), strict=True))
    per_image = {image: {metric: float(values[i]) for metric, values in zip(METRICS, each, strict=True)}
                 for i, image in enumerate(gts)}
    return Scores(corpus, per_image)
