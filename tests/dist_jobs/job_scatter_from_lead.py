"""parallel/lead.py::scatter_from_lead over 4 ranks (gloo; run by tests/trainer/test_routing_replay.py).

Each layout numbers every rank's replica (its data-parallel rank) as Megatron's orders would: TP peers adjacent
([0, 0, 1, 1]), pipeline stages apart ([0, 1, 0, 1]: rank 2 holds replica 0's second stage), pure data parallel,
one replica, and replicas whose first ranks are out of order ([0, 2, 1, 2]). Every rank must receive exactly its replica's share, built on rank 0 only, whatever the order of the
replicas' first ranks; the layouts follow each other in the same processes (the groups are made again).
"""

import torch.distributed as dist

from megatron_hapo.parallel import init_distributed
from megatron_hapo.parallel.lead import destroy_lead_group, init_lead_group, scatter_from_lead

LAYOUTS = ([0, 0, 1, 1], [0, 1, 0, 1], [0, 1, 2, 3], [0, 0, 0, 0], [0, 2, 1, 2], [0, 1, 0, 1])


def main():
    init_distributed()
    assert dist.get_world_size() == 4, "run with --nproc-per-node 4"
    rank = dist.get_rank()
    init_lead_group(1.0)
    for replica_of in LAYOUTS:
        n = len(set(replica_of))
        shares = [[f"replica {r}", bytes(1000 * (r + 1))] for r in range(n)] if rank == 0 else None
        got = scatter_from_lead(shares, replica=replica_of[rank])
        r = replica_of[rank]
        assert got == [f"replica {r}", bytes(1000 * (r + 1))], (replica_of, rank, got[0], len(got[1]))
    destroy_lead_group()
    dist.barrier()
    if rank == 0:
        print("job_scatter_from_lead: all checks passed", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
