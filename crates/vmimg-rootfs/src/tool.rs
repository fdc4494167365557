//! What a failed tool said, in one line.
//!
//! e2fsprogs and erofs-utils explain a failure in several lines: a banner,
//! warnings, then the error as each caller passed it up (`__populate_fs:
//! … while writing file "big"`, then `mke2fs: … while populating file
//! system`), or e2fsck's passes around the problem it found. An error
//! message quotes one: [`telling_line`] picks the line that names what went
//! wrong, and [`summary`] adds how many lines it leaves out. The whole
//! output stays in the error for a caller that wants it.

/// The line of a tool's `output` that tells most about its failure: the
/// first erofs error (`<E> …`, without its tag), else the first com_err
/// message (`… while …`, the innermost, which names the file), else the
/// first line that is not a banner (`e2fsck 1.47.0 (…)`), a progress line
/// (`Pass 1: …`), an erofs note or warning (`<I>`, `<W>`) or blank.
pub(crate) fn telling_line(output: &str) -> Option<&str> {
    let lines = || output.lines().map(str::trim).filter(|line| !line.is_empty());
    let erofs_error = lines().find_map(|line| line.strip_prefix("<E>").map(str::trim));
    let com_err = || lines().find(|line| line.contains(" while "));
    let other = || lines().find(|line| !is_noise(line));
    erofs_error.or_else(com_err).or_else(other)
}

/// `LINE`, or `LINE (and N more lines)`, for an error message; `no output`
/// when the tool said nothing.
pub(crate) fn summary(output: &str) -> String {
    let Some(line) = telling_line(output) else { return "no output".to_owned() };
    let others = output.lines().filter(|l| !l.trim().is_empty()).count().saturating_sub(1);
    match others {
        0 => line.to_owned(),
        1 => format!("{line} (and 1 more line)"),
        n => format!("{line} (and {n} more lines)"),
    }
}

/// Lines that say nothing about a failure.
fn is_noise(line: &str) -> bool {
    let banner = line.split_once(' ').is_some_and(|(name, rest)| {
        ["mke2fs", "e2fsck", "debugfs", "mkfs.erofs", "fsck.erofs"].contains(&name)
            && rest.starts_with(|c: char| c.is_ascii_digit())
    });
    banner || line.starts_with("Pass ") || line.starts_with("<I>") || line.starts_with("<W>")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs of e2fsprogs 1.47.0 and erofs-utils 1.5 failing, as they are.
    #[test]
    fn the_telling_line_of_real_failures() {
        let cases = [
            (
                "set_inode_xattr: No such file or directory while listing attributes of \"/t/none\"\n\
                 populate_fs2: No such file or directory while copying xattrs on root directory\n\
                 mke2fs: No such file or directory while populating file system\n",
                "set_inode_xattr: No such file or directory while listing attributes of \"/t/none\" \
                 (and 2 more lines)",
            ),
            (
                "\nFilesystem too small for a journal\n\
                 __populate_fs: Could not allocate block in ext2 filesystem while writing file \"big\"\n\
                 mke2fs: Could not allocate block in ext2 filesystem while populating file system\n",
                "__populate_fs: Could not allocate block in ext2 filesystem while writing file \"big\" \
                 (and 2 more lines)",
            ),
            (
                "e2fsck 1.47.0 (5-Feb-2023)\nPass 1: Checking inodes, blocks, and sizes\n\
                 Inode 7 has illegal block(s).  Clear? no\n\nIllegal block #4901 (4294967295) in inode 7.  IGNORED.\n\
                 Pass 2: Checking directory structure\n",
                "Inode 7 has illegal block(s).  Clear? no (and 4 more lines)",
            ),
            (
                "<W> erofs: something odd\n<E> erofs_io: Failed to read data from device - x:[0, 4096].\n\
                 <E> erofs: cannot read erofs superblock: -2\n<E> erofs: failed to read superblock\n",
                "erofs_io: Failed to read data from device - x:[0, 4096]. (and 3 more lines)",
            ),
            (
                "mkfs.erofs 1.5\n<E> erofs: failed to parse source directory: [Error 2] No such file or directory\n",
                "erofs: failed to parse source directory: [Error 2] No such file or directory (and 1 more line)",
            ),
            ("", "no output"),
        ];
        for (output, expected) in cases {
            assert_eq!(summary(output), expected, "{output}");
        }
    }
}
