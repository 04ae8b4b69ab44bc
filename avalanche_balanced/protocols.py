"""The run settings shared by the example and the comparison, so that they cannot drift apart.

``quick`` is the CPU protocol (5 experiences, reduced GELU ResNet-18, 100
training images per class, 3 epochs, buffer 500); ``paper`` is SARL's setting
(full ResNet-18, all images, 50 epochs, MultiStepLR at 35 and 45, buffer 500;
Sarfraz et al., ICLR 2025, and ``shared/design/SARL.md``), for a GPU; ``tiny`` is the
comparison's synthetic smoke setting for tests.
"""
__all__ = ["PROTOCOLS", "sarl_alpha_for"]

PROTOCOLS = {
    # Evaluations before the last one use 20 test images per class (eval_per_class);
    # learning rates are chosen on 50 held-out training images per class (val_per_class).
    "quick": dict(n_experiences=5, nf=20, per_class=100, epochs=3, lr=0.03, lr_steps=None, mem_size=500,
                  batch_size=32, batch_size_mem=32, warmup_epochs=1, sarl_alpha=0.2, seeds=[0, 1, 2],
                  eval_per_class=20, val_per_class=50),
    "paper": dict(n_experiences=5, nf=64, per_class=None, epochs=50, lr=0.03, lr_steps=[35, 45], mem_size=500,
                  batch_size=32, batch_size_mem=32, warmup_epochs=5, sarl_alpha=0.2, seeds=[1, 3, 5],
                  eval_per_class=None, val_per_class=50),
    # 20 classes of 8x8 noise images, seconds per method. nf 8: channels-last convolutions
    # with fewer channels crash single-threaded backward passes in the pinned torch 2.14.1
    # CPU build (heap corruption).
    "tiny": dict(n_experiences=5, nf=8, per_class=6, epochs=1, lr=0.05, lr_steps=None, mem_size=20,
                 batch_size=8, batch_size_mem=8, warmup_epochs=0, sarl_alpha=0.2, seeds=[0],
                 eval_per_class=1, val_per_class=3),
}
"""Settings by protocol name: experiences, model width ``nf``, training images per class
(None: all), epochs, SGD rate, MultiStepLR milestones, buffer size, current and replayed
batch sizes, SARL's warm-up epochs and replay-logit weight ``sarl_alpha``, default seeds, test
images per class for intermediate evaluations (None: all), held-out images per class for
learning-rate selection."""


def sarl_alpha_for(buffer_size: int, default: float = 0.2) -> float:
    """SARL's replay-logit weight for a buffer size: 0.5 up to 200 slots, else ``default`` (0.2 at
    500; the authors' seq-cifar100 settings, ``shared/design/SARL.md``)."""
    return 0.5 if buffer_size <= 200 else default
