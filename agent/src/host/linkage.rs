//! How an executable is linked, read from its ELF headers: whether the kernel must start a
//! dynamic loader for it (`PT_INTERP`) and which shared libraries that loader must find
//! (`DT_NEEDED`). `install-cni` uses it to warn before it puts a plugin on a node that the
//! node's own C library may not be able to run.

use std::path::Path;

/// `e_machine` of the architectures weft builds for.
pub const EM_X86_64: u16 = goblin::elf::header::EM_X86_64;
pub const EM_AARCH64: u16 = goblin::elf::header::EM_AARCH64;

/// What an executable's ELF headers say about how it is linked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linkage {
    /// `e_machine`.
    pub machine: u16,
    /// `PT_INTERP`: the dynamic loader the kernel starts instead of the program.
    pub interpreter: Option<String>,
    /// Every `DT_NEEDED` entry: the shared libraries the loader must find.
    pub needed: Vec<String>,
}

impl Linkage {
    /// Static: nothing to load before it runs. (A static-pie still has a dynamic section,
    /// for relocating itself, but no interpreter and no needed library.)
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed.is_empty()
    }

    /// The linkage of the ELF file in `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Result<Linkage, LinkageError> {
        if !bytes.starts_with(b"\x7fELF") {
            return Err(LinkageError::NotElf);
        }
        let elf =
            goblin::elf::Elf::parse(bytes).map_err(|e| LinkageError::Malformed(e.to_string()))?;
        Ok(Linkage {
            machine: elf.header.e_machine,
            interpreter: elf.interpreter.map(str::to_string),
            needed: elf.libraries.iter().map(|l| l.to_string()).collect(),
        })
    }

    /// The linkage of the ELF file at `path`.
    pub fn of_file(path: &Path) -> Result<Linkage, LinkageError> {
        let bytes = std::fs::read(path).map_err(|e| LinkageError::Read(e.to_string()))?;
        Linkage::of_bytes(&bytes)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkageError {
    #[error("cannot read it: {0}")]
    Read(String),
    #[error("it is not an ELF file")]
    NotElf,
    #[error("its ELF headers cannot be read: {0}")]
    Malformed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_loader_and_libraries() {
        // This test binary is linked the workspace's default way: against the shared glibc.
        let me = Linkage::of_file(&std::env::current_exe().unwrap()).unwrap();
        let machine = match std::env::consts::ARCH {
            "x86_64" => EM_X86_64,
            _ => EM_AARCH64,
        };
        assert_eq!(me.machine, machine);
        assert!(
            me.interpreter
                .as_deref()
                .is_some_and(|i| i.starts_with('/') && i.contains("ld-linux")),
            "{me:?}"
        );
        assert!(me.needed.iter().any(|n| n == "libc.so.6"), "{me:?}");
        assert!(!me.is_static());
        assert_eq!(Linkage::of_bytes(b"#!/bin/sh\n"), Err(LinkageError::NotElf));
        assert!(matches!(
            Linkage::of_bytes(b"\x7fELF\x02\x01"),
            Err(LinkageError::Malformed(_))
        ));
    }
}
