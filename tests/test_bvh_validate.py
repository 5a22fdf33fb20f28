"""validate=True checks a BVH's shape in C++, in linear time, before any traversal (issue 13 item 11).

A crafted tree whose every inner node has the next node as both children is a DAG with 2^depth
root-to-leaf paths: traversing it takes exponential time, so it must be refused at once.
"""
import time

import pytest
import torch

from fgp_fast.ops import native
from fgp_fast.ops.native_meta import TRI_STRIDE

from meshes import deform, random_blob

pytestmark = pytest.mark.skipif(native.cpp_unavailable_reason("cpu") is not None,
                                reason=f"cpp backend: {native.cpp_unavailable_reason('cpu')}")


def _bvh(seed=0, subdivisions=2):
    gen = torch.Generator().manual_seed(seed)
    v, faces = random_blob(gen, subdivisions)
    v = deform(v, gen).float()
    return native.MeshBVH(faces, v), v[None].contiguous(), gen


def _links(nodes, left, right):
    """Write child links (int bits) into a copy of nodes (1, M, 8)."""
    ni = nodes.clone().view(torch.int32)
    ni[0, :, 3] = left
    ni[0, :, 7] = right
    return ni.view(torch.float32)


def _surface_field(bvh, verts, nodes, tris=None, points=None):
    points = torch.zeros(1, 4, 3) if points is None else points
    return torch.ops.fgp.surface_field(points, verts, verts, bvh.faces, nodes, bvh.tris if tris is None else tris, True)


def _dag(verts, F, M, second):
    """Node k's children: k + 1 and k + second (1: the same child twice; 2: a Fibonacci DAG, also
    exponentially many paths); the last nodes are leaves over every triangle."""
    k = torch.arange(M, dtype=torch.int32)
    left, right = (k + 1).clamp(max=M - 1), (k + second).clamp(max=M - 1)
    for j in range(M - second, M):
        left[j], right[j] = ~torch.tensor(0, dtype=torch.int32), F
    nodes = torch.zeros(1, M, 8)
    nodes[0, :, :3] = verts[0].amin(0) - 1
    nodes[0, :, 4:7] = verts[0].amax(0) + 1
    return _links(nodes, left, right), left, right


@pytest.mark.parametrize("second,message", [(1, "same child twice"), (2, "more than one parent")])
def test_shared_child_dag_is_refused_quickly(second, message):
    bvh, verts, _ = _bvh()
    M, F = 61, bvh.num_faces   # depth 60: 2^60 (or fib(60)) paths
    nodes, left, right = _dag(verts, F, M, second)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=message):
        _surface_field(bvh, verts, nodes)
    assert time.perf_counter() - t0 < 10.0   # linear: milliseconds; the traversal would take years
    # the same shape as a topology handed to refit (parent links: each node's first parent)
    k = torch.arange(M, dtype=torch.int32)
    parent = (k - second).clamp(min=0)
    parent[0] = -1
    topo = torch.stack([left, right, parent, torch.zeros_like(k)], 1).contiguous()
    scratch = torch.empty(1, M, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fgp.bvh_refit(verts, bvh.faces, topo, bvh.prim, nodes.clone(), bvh.tris.clone(), scratch, True)


def _corrupt_cases(bvh):
    """(what, nodes, tris) with one defect each, from a valid refit."""
    nodes, tris = bvh.nodes, bvh.tris
    ni = nodes.view(torch.int32)[0]
    inner = (ni[:, 3] >= 0).nonzero()[:, 0]
    leaves = (ni[:, 3] < 0).nonzero()[:, 0]
    a = inner[len(inner) // 2].item()
    left, right = ni[:, 3].clone(), ni[:, 7].clone()
    cases = []
    l2 = left.clone()
    l2[a] = a                        # a self loop
    cases.append(("not after its parent", _links(nodes, l2, right), tris))
    l2 = left.clone()
    l2[a] = right[a]                 # the same child twice
    cases.append(("same child twice", _links(nodes, l2, right), tris))
    l2 = left.clone()
    l2[0] = left[a]                  # a grandchild shared by two parents (one subtree lost)
    cases.append(("more than one parent", _links(nodes, l2, right), tris))
    r2 = right.clone()
    r2[leaves[0]] = bvh.num_faces + 5   # a leaf range past the triangles
    cases.append(("outside", _links(nodes, left, r2), tris))
    l2, r2 = left.clone(), right.clone()
    l2[leaves[1]], r2[leaves[1]] = left[leaves[0]], right[leaves[0]]   # two leaves, one range
    cases.append(("exactly once", _links(nodes, l2, r2), tris))
    shrunk = nodes.clone()
    shrunk[0, 0, :3] = shrunk[0, 0, 4:7]   # the root box no longer holds its children
    cases.append(("does not hold", shrunk, tris))
    nan = nodes.clone()
    nan[0, leaves[2], 0] = float("nan")
    cases.append(("not finite", nan, tris))
    stale = tris.clone()
    stale[0, 3, 0] += 1e-3             # tris of other vertices (a missing refit)
    cases.append(("differ from verts", nodes, stale))
    dup = tris.clone()
    dup.view(torch.int32)[0, 1, 3] = dup.view(torch.int32)[0, 0, 3]   # a face twice, one missing
    cases.append(("permutation", nodes, dup))
    for col in (15, 19, 27, 28):      # the plane's offset, two edges' offsets, the slab's width
        bound = tris.clone()
        bound[0, 5, col] = bound[0, 5, col] * 0.5 - 1e-3   # a bound that no longer holds its triangle
        cases.append(("stored bound", nodes, bound))
    return cases


def test_corrupt_bvhs_raise_before_traversal():
    bvh, verts, _ = _bvh(1)
    for what, nodes, tris in _corrupt_cases(bvh):
        with pytest.raises(RuntimeError, match=what):
            _surface_field(bvh, verts, nodes, tris)
    _surface_field(bvh, verts, bvh.nodes)   # the untouched one passes


def test_too_deep_tree_is_refused():
    # A valid-shaped caterpillar: every inner node has a leaf child and the next inner node, 70 deep.
    bvh, verts, _ = _bvh(2)
    F, depth = bvh.num_faces, 70
    M = 2 * depth + 1
    left, right = torch.empty(M, dtype=torch.int32), torch.empty(M, dtype=torch.int32)
    start = 0
    for d in range(depth):
        node, leaf = 2 * d, 2 * d + 1
        left[node], right[node] = leaf, node + 2
        left[leaf], right[leaf] = ~start, start + 1
        start += 1
    left[M - 1], right[M - 1] = ~start, F
    nodes = torch.zeros(1, M, 8)
    nodes[0, :, :3] = verts[0].amin(0) - 1
    nodes[0, :, 4:7] = verts[0].amax(0) + 1
    with pytest.raises(RuntimeError, match="deeper"):
        _surface_field(bvh, verts, _links(nodes, left, right))


def test_corrupt_topologies_raise_before_refit():
    bvh, verts, _ = _bvh(3)
    topo = bvh.topo
    M = topo.shape[0]
    scratch = torch.empty(1, M, dtype=torch.int32)

    def refit(t, prim=None):
        torch.ops.fgp.bvh_refit(verts, bvh.faces, t, bvh.prim if prim is None else prim, torch.empty(1, M, 8),
                                torch.empty(1, bvh.num_faces, TRI_STRIDE), scratch, True)

    refit(topo)   # the real one passes
    inner = (topo[:, 0] >= 0).nonzero()[:, 0]
    a = inner[len(inner) // 2].item()
    bad = topo.clone()
    bad[topo[a, 0], 2] = 0            # a parent link that disagrees with the child links
    with pytest.raises(RuntimeError, match="parent link"):
        refit(bad)
    bad = topo.clone()
    bad[a, 1] = bad[a, 0]
    with pytest.raises(RuntimeError, match="same child twice"):
        refit(bad)
    prim = bvh.prim.clone()
    prim[0] = prim[1]
    with pytest.raises(RuntimeError, match="permutation"):
        refit(topo, prim)


@pytest.mark.parametrize("seed,subdivisions,leaf_size", [(4, 1, 1), (5, 2, 4), (6, 3, 8), (7, 3, 16)])
def test_valid_trees_pass_and_answer(seed, subdivisions, leaf_size):
    gen = torch.Generator().manual_seed(seed)
    v, faces = random_blob(gen, subdivisions)
    v = torch.stack([deform(v, gen), deform(v, gen)]).float()   # a batch of two poses
    bvh = native.MeshBVH(faces, v, leaf_size=leaf_size)
    points = (torch.randn(2, 64, 3, generator=gen) * 0.2).float()
    got = torch.ops.fgp.surface_field(points, bvh.verts, bvh.verts, bvh.faces, bvh.nodes, bvh.tris, True)
    ref = torch.ops.fgp.surface_field(points, bvh.verts, bvh.verts, bvh.faces, bvh.nodes, bvh.tris, False)
    assert torch.equal(got[1], ref[1])
    assert ((got[1] >= 0) & (got[1] < faces.shape[0])).all()
