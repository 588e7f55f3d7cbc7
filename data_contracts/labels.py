"""Class names of the paper's protocol for each corpus.

| corpus | classes | from the corpus's own codes |
|---|---|---|
| iemocap | neutral, happy, angry, sad | neu, hap + exc (merged as happy), ang, sad |
| msp-improv | neutral, happy, angry, sad | N, H, A, S (consensus label) |
| ravdess | neutral, calm, happy, sad, angry, fearful, disgust, surprised | emotion field 01..08 |
| savee | angry, disgust, fearful, happy, neutral, sad, surprised | a, d, f, h, n, sa, su |

SAVEE's own words (anger, fear, happiness, sadness, surprise) are renamed to the adjectives used
by the other corpora so that the same emotion has the same name everywhere. The order of each
tuple is the class index order used by models trained on that corpus.
"""

CORPORA: tuple[str, ...] = ("iemocap", "msp-improv", "ravdess", "savee")

LABELS: dict[str, tuple[str, ...]] = {
    "iemocap": ("neutral", "happy", "angry", "sad"),
    "msp-improv": ("neutral", "happy", "angry", "sad"),
    "ravdess": ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"),
    "savee": ("angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"),
}
