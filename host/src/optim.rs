//! SGD with momentum and weight decay (PyTorch semantics), owned by the project so that its
//! momentum buffers can be checkpointed and restored exactly (tch's optimizer cannot save them).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, Tensor};

pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Trainable variables by name (sorted, so the order never depends on a hash map).
    params: Vec<(String, Tensor)>,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn new(vs: &VarStore, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Sgd {
            lr,
            momentum,
            weight_decay,
            params,
            buffers: BTreeMap::new(),
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// `d = g + wd * p; buf = momentum * buf + d (buf = d on the first step); p -= lr * buf`.
    pub fn step(&mut self) {
        tch::no_grad(|| {
            for (name, p) in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if self.weight_decay != 0.0 {
                    &g + &*p * self.weight_decay
                } else {
                    g.shallow_clone()
                };
                let update = match self.buffers.get_mut(name) {
                    Some(buf) if self.momentum != 0.0 => {
                        let _ = buf.g_mul_scalar_(self.momentum).g_add_(&d);
                        buf.shallow_clone()
                    }
                    _ => {
                        if self.momentum != 0.0 {
                            self.buffers.insert(name.clone(), d.copy());
                        }
                        d
                    }
                };
                let _ = p.g_sub_(&(update * self.lr));
            }
        });
    }

    /// Momentum buffers as a safetensors file (written by the caller's atomic writer).
    pub fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(&str, &Tensor)> =
            self.buffers.iter().map(|(k, v)| (k.as_str(), v)).collect();
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("{}: cannot write optimizer state", path.display()))
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| anyhow::anyhow!("{}: corrupt optimizer state: {e}", path.display()))?;
        let known: BTreeMap<&str, &Tensor> =
            self.params.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut buffers = BTreeMap::new();
        for (name, t) in tensors {
            let Some(p) = known.get(name.as_str()) else {
                bail!(
                    "{}: momentum buffer '{name}' matches no parameter of the model",
                    path.display()
                );
            };
            if p.size() != t.size() {
                bail!(
                    "{}: momentum buffer '{name}' has shape {:?}, the parameter {:?}",
                    path.display(),
                    t.size(),
                    p.size()
                );
            }
            buffers.insert(name, t.to_device(p.device()));
        }
        self.buffers = buffers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    #[test]
    fn matches_pytorch_sgd_two_steps() {
        // torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01) on loss = sum(p^2), p0 = [1, -2]
        // step 1: g = [2,-4] + 0.01*p = [2.01,-4.02]; p = [0.799, -1.598]
        // step 2: g = 2p + 0.01p = [1.60599, -3.21198]; buf = 0.9*[2.01,-4.02] + g = [3.41499,-6.82998]
        //         p = [0.799 - 0.341499, -1.598 + 0.682998] = [0.457501, -0.915002]
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs
            .root()
            .var_copy("p", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut opt = Sgd::new(&vs, 0.1, 0.9, 0.01);
        for _ in 0..2 {
            opt.zero_grad();
            let loss = (&p * &p).sum(Kind::Float);
            loss.backward();
            opt.step();
        }
        let v: Vec<f32> = Vec::try_from(&p).unwrap();
        assert!((v[0] - 0.457501).abs() < 1e-5, "{v:?}");
        assert!((v[1] + 0.915002).abs() < 1e-5, "{v:?}");
    }
}
