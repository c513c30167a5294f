"""Training after (or for) pruning: everything that changes weights by gradient descent.

``loop`` (the shared teacher-forced training loop and ``TrainConfig``), ``recover`` (fine-tune,
LoRA merged back, distillation from the dense teacher), ``lasso`` + ``tspar`` (sparse group lasso
training, then two-pass pruning through compress's surgery). One-shot pruning (groups, scores,
allocation, surgery, reconstruction) lives in ``slimwhisper.compress``; imports go compress ->
train only: compress never imports train.
"""
