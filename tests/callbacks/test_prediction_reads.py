"""`predict` and `evaluate` read no tensor value per step: the reads do not grow with the steps."""

import torch
from torch.nn import functional as F

import fluxpy as fp


def reads_of(host_reads, run, n_batches):
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(n_batches)]
    learn = fp.Learner(torch.nn.Linear(3, 2), F.cross_entropy,
                       callbacks=[fp.Metrics(fp.accuracy, fp.top_k_accuracy(2))])
    host_reads.clear()
    run(learn, batches)
    return len(host_reads)


def test_predict_and_evaluate_read_no_values_per_step(host_reads):
    for run in (lambda learn, data: learn.predict(data),
                lambda learn, data: learn.predict(data, with_targets=True),
                lambda learn, data: learn.evaluate(data)):
        assert reads_of(host_reads, run, 2) == reads_of(host_reads, run, 7)
