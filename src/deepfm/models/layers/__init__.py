from deepfm.models.layers.attention import FieldAttention, field_attention_stack
from deepfm.models.layers.causal import CausalTransformer
from deepfm.models.layers.cin import CIN
from deepfm.models.layers.dnn import DNN
from deepfm.models.layers.embedding import FeatureEmbedding, add_field_embeddings
from deepfm.models.layers.fm_interaction import fm_interaction, fm_interaction_matrix
from deepfm.models.layers.target_attention import TargetAttention

__all__ = [
    "CIN",
    "DNN",
    "CausalTransformer",
    "FeatureEmbedding",
    "FieldAttention",
    "TargetAttention",
    "add_field_embeddings",
    "field_attention_stack",
    "fm_interaction",
    "fm_interaction_matrix",
]
