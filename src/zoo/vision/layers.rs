//! The pieces both CNN families are made of: a convolution followed by BatchNorm, and the
//! map of pretrained tensors they are built from, which decides per tensor whether it is
//! ever trainable.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use super::conv::{conv2d, ConvSpec};
use super::norm::{Activation, BatchNorm};
use super::Role;
use crate::zoo::linear::Param;
use crate::zoo::params::NamedVar;
use crate::zoo::ZooError;

/// timm's BatchNorm epsilon (PyTorch's default) for both families.
pub const BN_EPS: f64 = 1e-5;

/// The pretrained tensors by timm name, and the name prefixes of the units that may train
/// in this run (their tensors become `Var`s; the rest stay plain tensors, never tracked).
pub struct Weights {
    pub tensors: HashMap<String, Tensor>,
    pub trainable_prefixes: Vec<String>,
}

impl Weights {
    pub fn get(&self, name: &str) -> Result<&Tensor, ZooError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ZooError::MissingTensor(name.to_string()))
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn trainable(&self, name: &str) -> bool {
        self.trainable_prefixes
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()))
    }

    /// `name` as a trainable `Var` when its unit may train, a frozen tensor otherwise.
    pub fn param(&self, name: &str) -> Result<Param, ZooError> {
        let tensor = self.get(name)?.to_dtype(candle_core::DType::F32)?;
        Ok(if self.trainable(name) {
            Param::Trainable(Var::from_tensor(&tensor)?)
        } else {
            Param::Frozen(tensor)
        })
    }

    pub fn conv(&self, name: &str, stride: usize, depthwise: bool) -> Result<Conv, ZooError> {
        let weight = self.param(&format!("{name}.weight"))?;
        let dims = weight.tensor().dims().to_vec();
        let &[c_out, _, kernel, kernel_w] = dims.as_slice() else {
            return Err(ZooError::Config(format!(
                "`{name}.weight` has shape {dims:?}, a convolution needs 4 dimensions"
            )));
        };
        if kernel != kernel_w {
            return Err(ZooError::Unsupported(format!(
                "`{name}` has a {kernel}x{kernel_w} kernel; only square kernels are supported"
            )));
        }
        Ok(Conv {
            name: name.to_string(),
            weight,
            spec: ConvSpec {
                kernel,
                stride,
                padding: kernel / 2,
                groups: if depthwise { c_out } else { 1 },
            },
        })
    }

    pub fn batch_norm(&self, name: &str) -> Result<BatchNorm, ZooError> {
        let buffer = |suffix: &str| -> Result<Var, ZooError> {
            let t = self.get(&format!("{name}.{suffix}"))?;
            Ok(Var::from_tensor(&t.to_dtype(candle_core::DType::F32)?)?)
        };
        Ok(BatchNorm {
            name: name.to_string(),
            weight: self.param(&format!("{name}.weight"))?,
            bias: self.param(&format!("{name}.bias"))?,
            running_mean: buffer("running_mean")?,
            running_var: buffer("running_var")?,
            eps: BN_EPS,
        })
    }

    pub fn conv_bn(
        &self,
        conv: &str,
        bn: &str,
        stride: usize,
        depthwise: bool,
    ) -> Result<ConvBn, ZooError> {
        Ok(ConvBn {
            conv: self.conv(conv, stride, depthwise)?,
            bn: self.batch_norm(bn)?,
        })
    }
}

/// A bias-free convolution with its timm weight.
#[derive(Debug, Clone)]
pub struct Conv {
    pub name: String,
    pub weight: Param,
    pub spec: ConvSpec,
}

impl Conv {
    pub fn forward(&self, x: &Tensor, role: Role) -> Result<Tensor, ZooError> {
        let weight = match role {
            Role::Train => self.weight.tensor().clone(),
            // A var of a unit that unfreezes later must not start a graph before it does.
            Role::Frozen => self.weight.tensor().detach(),
        };
        conv2d(x, &weight, self.spec)
    }

    pub fn out_channels(&self) -> Result<usize, ZooError> {
        Ok(self.weight.tensor().dim(0)?)
    }

    fn push_vars(&self, out: &mut Vec<NamedVar>) {
        if let Param::Trainable(var) = &self.weight {
            out.push(NamedVar {
                name: format!("{}.weight", self.name),
                var: var.clone(),
                weight_decay: true,
                row_grads: None,
            });
        }
    }
}

/// Convolution then BatchNorm, the unit of both families.
#[derive(Debug, Clone)]
pub struct ConvBn {
    pub conv: Conv,
    pub bn: BatchNorm,
}

impl ConvBn {
    /// Convolution, BatchNorm, then `act`.
    pub fn forward(&self, x: &Tensor, role: Role, act: Activation) -> Result<Tensor, ZooError> {
        self.bn.forward(&self.conv.forward(x, role)?, role, act)
    }

    pub fn push_vars(&self, out: &mut Vec<NamedVar>) {
        self.conv.push_vars(out);
        self.bn.push_vars(out);
    }

    pub fn push_buffers(&self, out: &mut Vec<NamedVar>) {
        self.bn.push_buffers(out);
    }

    /// Makes every tensor a plain one (serving: no graph is ever recorded).
    pub fn freeze(&mut self) {
        self.conv.weight.freeze();
        self.bn.weight.freeze();
        self.bn.bias.freeze();
    }
}
