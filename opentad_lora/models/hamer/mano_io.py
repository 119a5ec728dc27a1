"""Safe reading of MANO-format model files (``MANO_RIGHT.pkl`` layout).

The official file is a Python-2 pickle whose arrays are partly chumpy ``Ch`` objects and whose ``J_regressor`` is a
scipy sparse matrix. Unpickling it normally would need chumpy and would run whatever the file asks for; here a
restricted unpickler maps exactly those classes to inert stand-ins that hold numpy arrays, and refuses every other
global. Neither chumpy nor scipy is needed.
"""
import codecs
import importlib
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, Union

import numpy as np

#: Keys every MANO-format file must have (``f`` is the official name of the faces; ``faces`` is accepted too).
REQUIRED_KEYS = ('v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights', 'kintree_table',
                 'hands_components', 'hands_mean')


class _ChumpyArray:
    """Stand-in for ``chumpy.ch.Ch``: a plain Ch pickles its value as ``state['x']``."""

    def __setstate__(self, state: Dict[str, Any]) -> None:
        value = state.get('x') if isinstance(state, dict) else None
        if not isinstance(value, np.ndarray):
            raise pickle.UnpicklingError('chumpy object without an array "x" (only plain chumpy.ch.Ch is supported)')
        self.array = value


class _SparseMatrix:
    """Stand-in for a scipy CSC/CSR matrix; ``__setstate__`` receives its ``__dict__`` (data, indices, indptr)."""

    compressed_axis = 1

    def __setstate__(self, state: Dict[str, Any]) -> None:
        try:
            shape = tuple(int(s) for s in state.get('_shape', state.get('shape')))
            data, indices, indptr = (np.asarray(state[k]) for k in ('data', 'indices', 'indptr'))
        except (KeyError, TypeError) as err:
            raise pickle.UnpicklingError(f'sparse matrix without data/indices/indptr/shape ({err})') from None
        dense = np.zeros(shape, dtype=np.float64)
        for outer in range(len(indptr) - 1):
            inner = indices[indptr[outer]:indptr[outer + 1]]
            values = data[indptr[outer]:indptr[outer + 1]]
            if self.compressed_axis == 1:
                dense[inner, outer] = values
            else:
                dense[outer, inner] = values
        self.array = dense


class _CSRMatrix(_SparseMatrix):
    compressed_axis = 0


_STAND_INS = (_ChumpyArray, _SparseMatrix, _CSRMatrix)


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor`` restricted to the stand-ins (protocol 0/1 pickles of new-style objects)."""
    if cls not in _STAND_INS or base is not object or state is not None:
        raise pickle.UnpicklingError(f'refusing copyreg._reconstructor({cls!r}, {base!r})')
    return object.__new__(cls)


def _numpy_attr(name: str) -> Any:
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f'numpy has no multiarray.{name}')


def _allowed_globals() -> Dict[Tuple[str, str], Callable[[], Any]]:
    table: Dict[Tuple[str, str], Callable[[], Any]] = {
        ('chumpy.ch', 'Ch'): lambda: _ChumpyArray,
        ('copyreg', '_reconstructor'): lambda: _reconstructor,
        ('copy_reg', '_reconstructor'): lambda: _reconstructor,
        ('_codecs', 'encode'): lambda: codecs.encode,  # bytes in protocol-2 pickles written by Python 3
        ('numpy', 'ndarray'): lambda: np.ndarray,
        ('numpy', 'dtype'): lambda: np.dtype,
    }
    for module in ('builtins', '__builtin__'):  # Python 3 writes __builtin__ in protocol < 3 pickles
        for value in (object, set, frozenset):
            table[(module, value.__name__)] = lambda value=value: value
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        table[(module, '_reconstruct')] = lambda: _numpy_attr('_reconstruct')
        table[(module, 'scalar')] = lambda: _numpy_attr('scalar')
    for module in ('scipy.sparse.csc', 'scipy.sparse._csc'):
        table[(module, 'csc_matrix')] = lambda: _SparseMatrix
    for module in ('scipy.sparse.csr', 'scipy.sparse._csr'):
        table[(module, 'csr_matrix')] = lambda: _CSRMatrix
    return table


class _MANOUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy arrays, chumpy ``Ch`` arrays and scipy CSC/CSR matrices."""

    _table = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        factory = self._table.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f'refusing to load global {module}.{name}; a MANO file may contain only numpy arrays, '
                'chumpy.ch.Ch arrays and scipy CSC/CSR matrices')
        return factory()


def _to_numpy(value: Any) -> Any:
    if isinstance(value, _STAND_INS):
        return value.array
    return value


def read_mano_pickle(path: Union[str, Path]) -> Dict[str, Any]:
    """Unpickle a MANO-format file safely; chumpy and sparse values come back as numpy arrays.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file if it is not a valid pickle of a dict or uses a forbidden global.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'MANO model file {path} does not exist (the real MANO_RIGHT.pkl needs a licence '
                                'from mano.is.tue.mpg.de; tools/data/make_synthetic_mano.py writes a stand-in).')
    try:
        with path.open('rb') as handle:
            data = _MANOUnpickler(handle, encoding='latin1').load()  # Python-2 str buffers
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f'Cannot read MANO model file {path}: {err}') from None
    if not isinstance(data, dict):
        raise ValueError(f'MANO model file {path} holds a {type(data).__name__}, expected a dict.')
    return {key: _to_numpy(value) for key, value in data.items()}


def _check(cond: bool, path: Path, message: str) -> None:
    if not cond:
        raise ValueError(f'MANO model file {path}: {message}')


def load_mano_model(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Read and validate a MANO-format file.

    Returns:
        ``v_template (V, 3)``, ``shapedirs (V, 3, S)``, ``posedirs (V, 3, 9 (J - 1))``, ``J_regressor (J, V)``,
        ``weights (V, J)``, ``parents (J,)`` (root -1), ``faces (F, 3)`` int64, ``hands_components (3 (J-1), 3 (J-1))``
        and ``hands_mean (3 (J - 1),)``, all float64 except the integer arrays.

    Raises:
        ValueError: naming the file and the key whose value is missing or has an inconsistent shape.
    """
    path = Path(path)
    raw = read_mano_pickle(path)
    if 'faces' in raw and 'f' not in raw:
        raw['f'] = raw['faces']
    missing = [k for k in (*REQUIRED_KEYS, 'f') if k not in raw]
    _check(not missing, path, f'missing keys {missing}')
    model = {}
    for key in (*REQUIRED_KEYS, 'f'):
        try:
            model[key] = np.asarray(raw[key], dtype=np.float64 if key != 'f' else np.int64)
        except (TypeError, ValueError) as err:
            raise ValueError(f'MANO model file {path}: key {key!r} is not numeric ({err})') from None
    model['faces'] = model.pop('f')
    num_verts = model['v_template'].shape[0]
    num_joints = model['J_regressor'].shape[0]
    pose_dim = 3 * (num_joints - 1)
    expected = {'v_template': (num_verts, 3), 'J_regressor': (num_joints, num_verts),
                'weights': (num_verts, num_joints), 'kintree_table': (2, num_joints),
                'posedirs': (num_verts, 3, 3 * pose_dim), 'hands_components': (pose_dim, pose_dim),
                'hands_mean': (pose_dim,)}
    for key, shape in expected.items():
        _check(model[key].shape == shape, path, f'{key!r} has shape {model[key].shape}, expected {shape}')
    shapedirs = model['shapedirs']
    _check(shapedirs.ndim == 3 and shapedirs.shape[:2] == (num_verts, 3), path,
           f"'shapedirs' has shape {shapedirs.shape}, expected ({num_verts}, 3, num_betas)")
    faces = model['faces']
    _check(faces.ndim == 2 and faces.shape[1] == 3 and faces.size > 0 and faces.min() >= 0
           and faces.max() < num_verts, path, f"'f' must be (F, 3) vertex indices below {num_verts}")
    parents = model.pop('kintree_table')[0].astype(np.int64)
    parents[0] = -1  # the official file stores 2**32 - 1 for the root
    _check(all(0 <= parents[j] < j for j in range(1, num_joints)), path,
           'kintree_table must list every parent before its child')
    model['parents'] = parents
    return model
