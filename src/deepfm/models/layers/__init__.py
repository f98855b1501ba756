from deepfm.models.layers.dnn import DNN
from deepfm.models.layers.embedding import FeatureEmbedding
from deepfm.models.layers.fm import FMInteraction, fm_interaction

__all__ = ["DNN", "FMInteraction", "FeatureEmbedding", "fm_interaction"]
