//! The encoder layer: resolve a BERT checkpoint (local folder or Hub id), load its weights in
//! any of the formats BERT checkpoints ship in, tokenize, embed (windows, pooling,
//! normalisation) and predict masked tokens.

pub mod bert;
pub mod config;
pub mod device;
pub mod encoder;
pub mod grad_ops;
pub mod hub;
pub mod kernels;
pub mod pickle;
pub mod quant;
pub mod tokenizer;
pub mod weights;

pub use config::{BertConfig, Pooling};
pub use device::{keep_freed_memory, parse_device, parse_dtype, parse_precision, tune_allocator};
pub use encoder::{
    ContextText, Encoder, EncoderOptions, MaskPrediction, ModelInfo, TokenScore, Window,
    WindowConfig, WindowContext,
};
pub use hub::{resolve_model, ModelSource, ResolvedModel};
