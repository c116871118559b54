"""Fine-tuning across the task mixture: TRL + PEFT (+ DeepSpeed), loss on answer tokens only.

``train(TrainConfig(...))`` runs one fine-tuning job and returns a :class:`TrainResult` whose
``model_dir`` loads with :func:`recbrew.models.loading.load_model`.
"""

from recbrew.train.config import TrainConfig, load_config
from recbrew.train.run import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
