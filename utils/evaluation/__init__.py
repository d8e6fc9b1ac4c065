"""Caption quality against reference captions (BLEU, METEOR, ROUGE-L, CIDEr-D), computed by pycocoevalcap.

files: bounded reading; references: the reference captions; captions_files: captions made earlier;
matching: captions paired with their references; pycoco: pycocoevalcap and its Java, run safely;
scoring: the metrics; evaluate: all of it for one run; summary: what people and programs are shown.
"""
