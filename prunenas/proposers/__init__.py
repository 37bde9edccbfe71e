"""Proposers: pruning methods used as architecture search (Liu et al., ICLR 2019).

A proposer scores the channels of a (trained) base network and turns the scores into per-slot widths — an
:class:`~prunenas.arch.Architecture` that is then trained from scratch. Shared machinery:

* :mod:`prunenas.proposers.channels` — where each slot's channels live in the network's tensors
  (:func:`~prunenas.proposers.channels.channel_refs`), weight inheritance from the base network
  (:func:`~prunenas.proposers.channels.inherit`) and zeroing of dropped channels in place
  (:func:`~prunenas.proposers.channels.zero_channels`);
* :mod:`prunenas.proposers.select` — from per-layer channel scores to per-slot scores, and from scores to
  widths by threshold, by cost target (MACs or params), by pooled fraction, or at given widths.
"""
