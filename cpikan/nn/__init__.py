"""Models: Scaled-cPIKAN, the MLP baseline, Fourier features, initialisations."""

from cpikan.nn.base import ScaledModel
from cpikan.nn.chebykan import ChebyKANLayer, ScaledCPIKAN
from cpikan.nn.fourier import FourierFeatures
from cpikan.nn.init import INITS
from cpikan.nn.mlp import MLP
from cpikan.nn.tensor_chebyshev import TensorChebyshev

__all__ = ["INITS", "MLP", "ChebyKANLayer", "FourierFeatures", "ScaledCPIKAN", "ScaledModel", "TensorChebyshev"]
