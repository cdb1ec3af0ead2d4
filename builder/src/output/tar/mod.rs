//! Tar streams, read and written member by member: opening a (compressed)
//! base ([`base`]), the raw-block reader ([`reader`]) and writer
//! ([`writer`]), the policy every reader of a base applies
//! ([`entry_policy`]), the layer applied to a stream ([`rewrite`]) and the
//! cancellable zstd stage ([`compressor`]).

pub(crate) mod base;
pub(crate) mod compressor;
pub(crate) mod entry_policy;
pub(crate) mod paths;
pub(crate) mod reader;
pub(crate) mod rewrite;
pub(crate) mod writer;
