"""How far can class groups agree with CIFAR-100's superclasses, given a trained model's prototypes?

    python investigations/grouping_ceiling/grouping_ceiling.py runs/<experiment_id>/checkpoint.pt [--seed 0]

Reads the class prototypes a SARL-GELU run saved (``examples/split_cifar100_sarl_balanced.py``
writes them in its checkpoint; each class's prototype is fixed at the end of its own
experience, so the final checkpoint holds the prototypes every earlier regrouping saw).
For the classes seen after each experience (class order from the run's class-order seed)
it prints the adjusted Rand index against the superclasses of:

* ``centred``: the default grouping (centred prototype cosines, average linkage stopped at
  the 0.96 quantile of the pair scores, groups of at least 2 classes);
* ``raw``: the same on raw cosines with lone classes allowed (the earlier geometry);
* ``learned``: the same on the checkpoint's similarity network's scores;
* ``best cut``: the best ARI over 60 stopping thresholds of the centred dendrogram, read
  off the truth: a ceiling for any threshold rule on these features, not a method.
"""
import argparse

import torch

from avalanche_balanced import ClassPrototypes, SemanticSimilarity
from avalanche_balanced.data import split_cifar100
from avalanche_balanced.metrics import group_agreement
from avalanche_balanced.importance import cosine_to_unit
from avalanche_balanced.semantic import average_linkage


def ari(scores, seen, quantile, min_size, f2c):
    pairs = seen.unsqueeze(0) & seen.unsqueeze(1)
    pairs.fill_diagonal_(False)
    threshold = torch.quantile(scores[pairs].float(), quantile)
    groups = average_linkage(scores, seen, threshold, min_size=min_size)
    classes = torch.nonzero(seen).squeeze(1)
    return float(group_agreement(classes, groups[classes], f2c))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="the run's class-order seed")
    parser.add_argument("--n_experiences", type=int, default=5)
    parser.add_argument("--data_root", default=None)
    args = parser.parse_args(argv)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    protos = ClassPrototypes(*state["prototypes"]["prototypes"].shape)
    protos.load_state_dict(state["prototypes"])
    net = SemanticSimilarity(protos.num_feats)
    net.load_state_dict(state["similarity_net"])
    bm = split_cifar100(args.n_experiences, root=args.data_root, seed=args.seed, per_class=10, test_per_class=1)
    f2c = bm.fine_to_coarse
    print("| after experience | classes | superclasses present | centred | raw | learned | best cut |")
    print("|---|---|---|---|---|---|---|")
    seen = torch.zeros(protos.num_classes, dtype=torch.bool)
    for k, exp in enumerate(bm.train_stream):
        seen[list(exp.classes_in_this_experience)] = True
        sub = ClassPrototypes(protos.num_classes, protos.num_feats)
        sub.prototypes.copy_(protos.prototypes)
        sub.valid.copy_(seen & protos.valid)
        centred = cosine_to_unit(sub.cosine_matrix(centered=True))
        raw = cosine_to_unit(sub.cosine_matrix(centered=False))
        with torch.no_grad():
            learned = net.pairwise(sub.prototypes)
        best = max(ari(centred, sub.valid, q, 1, f2c) for q in torch.linspace(0.5, 0.999, 60).tolist())
        print(f"| {k} | {int(sub.valid.sum())} | {len(set(f2c[sub.valid].tolist()))} | "
              f"{ari(centred, sub.valid, 0.96, 2, f2c):.3f} | {ari(raw, sub.valid, 0.96, 1, f2c):.3f} | "
              f"{ari(learned, sub.valid, 0.96, 2, f2c):.3f} | {best:.3f} |")


if __name__ == "__main__":
    main()
