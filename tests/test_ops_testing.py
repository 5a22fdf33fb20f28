"""The backend contract checker (fgp_fast.ops.testing) catches broken backends, so it can fail."""
import pytest
import torch

from fgp_fast.ops import backends, reference, testing
from fgp_fast.ops.flow_aux import FlowAux
from fgp_fast.ops.scenes import blob_scene


@pytest.fixture
def register():
    names = []

    def add(name, **impls):
        backends.register_backend(name, available=lambda device: None, priority=-100, **impls)
        names.append(name)
        return name

    yield add
    for name in names:
        backends._BACKENDS.pop(name, None)


def _wrapped(edit):
    """A flow_encode that runs the reference then lets ``edit(flow, aux)`` break something."""
    def flow_encode(vt, vs, faces, cam, n, delta, near, far, sampling, return_aux, dtype):
        flow, aux = reference.flow_encode(vt, vs, faces, cam, n, delta, near, far, sampling, True, dtype)
        flow, aux = edit(flow.clone(), FlowAux(*(t.clone() for t in aux)))
        return (flow, aux) if return_aux else flow
    return flow_encode


def _scene():
    return blob_scene(0)


def test_the_reference_passes_its_own_contract(register):
    name = register("copy", flow_encode=_wrapped(lambda f, a: (f, a)))
    stats = testing.assert_flow_matches_reference(name, *_scene(), n_samples=3)
    assert stats == {"tie_fraction": 0.0, "raster_agreement": 1.0}


def _flow_off(f, a):
    f[0, 1, 5, 7] += 1e-3
    return f, a


def _wrong_face(f, a):
    sf = a.sample_face_id
    hit = a.mask[0].nonzero()[0]
    sf[0, 0, hit[0], hit[1]] = (sf[0, 0, hit[0], hit[1]] + 7) % 320
    return f, a


def _raster_off(f, a):
    hit = a.mask[0].nonzero()[0]
    a.face_id[0, hit[0], hit[1]] = (a.face_id[0, hit[0], hit[1]] + 1) % 320
    return f, a


def _nan(f, a):
    f[0, 0, 0, 0] = float("nan")
    return f, a


@pytest.mark.parametrize("edit,match", [(_flow_off, "differing flow"), (_wrong_face, "not \\(tied\\) nearest"),
                                        (_raster_off, "raster agrees"), (_nan, "not finite")])
def test_a_broken_flow_fails(register, edit, match):
    name = register("broken", flow_encode=_wrapped(edit))
    with pytest.raises(AssertionError, match=match):
        testing.assert_flow_matches_reference(name, *_scene(), n_samples=3)


def test_a_broken_surface_field_fails():
    vt, vs, faces, _ = _scene()
    pts = vt + 0.01
    ref = reference.surface_field(pts, vt, vs, faces)
    off = ref.p_src.clone()
    off[0, 3] += 1e-3
    with pytest.raises(AssertionError, match="p_src"):
        testing.assert_surface_field_matches(ref._replace(p_src=off), pts, vt, vs, faces, ref)
    face = ref.face_id.clone()
    face[0, 3] = (face[0, 3] + 11) % faces.shape[0]
    with pytest.raises(AssertionError, match="not \\(tied\\) nearest"):
        testing.assert_surface_field_matches(ref._replace(face_id=face), pts, vt, vs, faces, ref)


def test_an_encoder_that_skips_an_element_fails(register):
    class Skips:
        def __init__(self, topology, n_samples, delta, sampling):
            self.topology, self.n, self.delta, self.sampling = topology, n_samples, delta, sampling

        def encode(self, vt, vs, camera, near, far, out):
            flow = reference.flow_encode(vt, vs, self.topology.faces, camera, self.n, self.delta, near, far,
                                         self.sampling, False, out.dtype)
            out.view(-1)[1:] = flow.reshape(-1)[1:]   # element 0 is never written
            return out

    name = register("skips", flow_encode=reference.flow_encode, encoder=Skips)
    vt, vs, faces, cam = _scene()
    with pytest.raises(AssertionError, match="not wholly written"):
        testing.assert_encoder_matches(name, vt, vs, faces, cam, n_samples=2)


def test_tie_rule_accepts_only_near_ties():
    tri = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0.0, 0, 0], [0, 1, 0], [-1, 0, 0]],
                        [[5.0, 5, 5], [6, 5, 5], [5, 6, 5]]], dtype=torch.float64)
    p = torch.tensor([[0.0, 0.5, 0.2], [0.0, 0.5, 0.2], [0.3, 0.3, 0.1]], dtype=torch.float64)
    ok = testing.tie_rule_accepts(p, tri, torch.tensor([0, 1, 1]))
    assert ok.tolist() == [True, True, False]   # on the shared edge both tie; the third is 0.2 m farther
    assert not testing.tie_rule_accepts(p[:1], tri, torch.tensor([2])).any()
