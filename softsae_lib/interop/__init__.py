"""Interoperability with other SAE ecosystems.

* :mod:`softsae_lib.interop.saelens`: export to and import from SAELens folders (needs ``sae-lens``;
  importing it registers the ``softsae`` architecture with SAELens).
"""
