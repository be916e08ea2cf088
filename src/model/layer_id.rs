//! Layer identities: the timm name of every layer a plan describes, the forward pass reports,
//! and the counting lists.

/// Parts of a block. ConvNeXt's are named as timm names them; the other block types of the
/// modernization roadmap number their convolutions, norms and activations in order (`conv1`,
/// `norm1`, `act1`, …) as torchvision's ResNet does, with the projection shortcut under
/// `shortcut`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    ConvDw,
    Norm,
    Fc1,
    Act,
    Grn,
    Fc2,
    Gamma,
    /// The residual add that ends the block.
    Add,
    /// `conv1`, `conv2`, … (numbered from 1).
    Conv(u8),
    NormN(u8),
    ActN(u8),
    ShortcutConv,
    ShortcutNorm,
}

impl Part {
    pub fn name(self) -> String {
        match self {
            Part::ConvDw => "conv_dw".into(),
            Part::Norm => "norm".into(),
            Part::Fc1 => "mlp.fc1".into(),
            Part::Act => "mlp.act".into(),
            Part::Grn => "mlp.grn".into(),
            Part::Fc2 => "mlp.fc2".into(),
            Part::Gamma => "gamma".into(),
            Part::Add => "add".into(),
            Part::Conv(i) => format!("conv{i}"),
            Part::NormN(i) => format!("norm{i}"),
            Part::ActN(i) => format!("act{i}"),
            Part::ShortcutConv => "shortcut.0".into(),
            Part::ShortcutNorm => "shortcut.1".into(),
        }
    }
}

/// A named layer. Names follow timm's parameter names (`stages.2.blocks.5.conv_dw`) so what the
/// user sees matches the checkpoint and timm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerId {
    Stem,
    /// `stem.0`, `stem.1`, …: the stem's layers in order.
    StemPart(u8),
    Stage(usize),
    Downsample(usize),
    /// `stages.S.downsample.0`, `.1`: the layers between stages.
    DownsamplePart(usize, u8),
    Block(usize, usize),
    BlockPart(usize, usize, Part),
    Head,
    HeadPool,
    HeadNorm,
    HeadFc,
}

impl LayerId {
    pub fn name(&self) -> String {
        match *self {
            LayerId::Stem => "stem".into(),
            LayerId::StemPart(i) => format!("stem.{i}"),
            LayerId::Stage(s) => format!("stages.{s}"),
            LayerId::Downsample(s) => format!("stages.{s}.downsample"),
            LayerId::DownsamplePart(s, i) => format!("stages.{s}.downsample.{i}"),
            LayerId::Block(s, b) => format!("stages.{s}.blocks.{b}"),
            LayerId::BlockPart(s, b, p) => format!("stages.{s}.blocks.{b}.{}", p.name()),
            LayerId::Head => "head".into(),
            LayerId::HeadPool => "head.global_pool".into(),
            LayerId::HeadNorm => "head.norm".into(),
            LayerId::HeadFc => "head.fc".into(),
        }
    }

    /// Containers hold other layers; leaves do the work.
    pub fn is_container(&self) -> bool {
        matches!(
            self,
            LayerId::Stem
                | LayerId::Stage(_)
                | LayerId::Downsample(_)
                | LayerId::Block(..)
                | LayerId::Head
        )
    }

    /// The stage a layer belongs to (the stem is reported as `None`, as is the head).
    pub fn stage(&self) -> Option<usize> {
        match *self {
            LayerId::Stage(s)
            | LayerId::Downsample(s)
            | LayerId::DownsamplePart(s, _)
            | LayerId::Block(s, _)
            | LayerId::BlockPart(s, _, _) => Some(s),
            _ => None,
        }
    }

    /// Activations of this layer are 4-D channels-last inside the model.
    pub fn is_spatial(&self) -> bool {
        !matches!(
            self,
            LayerId::Head | LayerId::HeadPool | LayerId::HeadNorm | LayerId::HeadFc
        )
    }
}

impl std::fmt::Display for LayerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
