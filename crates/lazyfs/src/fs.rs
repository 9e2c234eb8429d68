//! The file system: a passthrough to the backing directory whose file data writes stay
//! in memory (per inode, in 4 KiB pages) until the file is synced.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, FUSE_ROOT_ID,
};

/// The unit of unsynced data kept per file.
const PAGE_BYTES: u64 = 4096;
/// Attributes are not cached by the kernel: sizes change with unsynced writes, and a
/// stale size would make the kernel cut reads short.
const NO_CACHE: Duration = Duration::ZERO;

/// What a file holds beyond what the backing file holds: written, not yet synced.
#[derive(Default)]
struct Unsynced {
    /// Whole pages, by index, as the file reads now.
    pages: BTreeMap<u64, Vec<u8>>,
    /// The file's size as it reads now.
    size: u64,
}

/// The file system's state; every operation runs on fuser's one session thread.
pub struct LazyFs {
    backing: PathBuf,
    /// Inode (the backing file's) to its path under the backing directory.
    paths: HashMap<u64, PathBuf>,
    unsynced: HashMap<u64, Unsynced>,
    /// Open files: handle to (inode, backing file).
    handles: HashMap<u64, (u64, File)>,
    next_handle: u64,
}

fn errno(error: &io::Error) -> i32 {
    error.raw_os_error().unwrap_or(libc::EIO)
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

fn time(seconds: i64, nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::new(seconds.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
}

impl LazyFs {
    /// A file system over `backing`.
    pub fn new(backing: PathBuf) -> LazyFs {
        let mut paths = HashMap::new();
        paths.insert(FUSE_ROOT_ID, PathBuf::new());
        LazyFs {
            backing,
            paths,
            unsynced: HashMap::new(),
            handles: HashMap::new(),
            next_handle: 1,
        }
    }

    fn real(&self, relative: &Path) -> PathBuf {
        self.backing.join(relative)
    }

    fn path_of(&self, ino: u64) -> Result<PathBuf, i32> {
        self.paths.get(&ino).cloned().ok_or(libc::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, i32> {
        Ok(self.path_of(parent)?.join(name))
    }

    /// The inode of a backing entry: the backing file's, but the root is FUSE's root.
    fn ino_of(&self, relative: &Path, metadata: &std::fs::Metadata) -> u64 {
        if relative.as_os_str().is_empty() {
            FUSE_ROOT_ID
        } else {
            metadata.ino()
        }
    }

    fn attr(&self, ino: u64, metadata: &std::fs::Metadata) -> FileAttr {
        let size = self
            .unsynced
            .get(&ino)
            .map_or(metadata.size(), |unsynced| unsynced.size);
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(metadata.atime(), metadata.atime_nsec()),
            mtime: time(metadata.mtime(), metadata.mtime_nsec()),
            ctime: time(metadata.ctime(), metadata.ctime_nsec()),
            crtime: time(metadata.ctime(), metadata.ctime_nsec()),
            kind: kind_of(metadata.mode()),
            perm: (metadata.mode() & 0o7777) as u16,
            nlink: metadata.nlink() as u32,
            uid: metadata.uid(),
            gid: metadata.gid(),
            rdev: metadata.rdev() as u32,
            blksize: PAGE_BYTES as u32,
            flags: 0,
        }
    }

    /// Looks `relative` up in the backing directory and remembers its inode's path.
    fn entry(&mut self, relative: PathBuf) -> Result<FileAttr, i32> {
        let metadata = std::fs::symlink_metadata(self.real(&relative)).map_err(|e| errno(&e))?;
        let ino = self.ino_of(&relative, &metadata);
        self.paths.insert(ino, relative);
        Ok(self.attr(ino, &metadata))
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, i32> {
        let path = self.path_of(ino)?;
        let metadata = std::fs::symlink_metadata(self.real(&path)).map_err(|e| errno(&e))?;
        Ok(self.attr(ino, &metadata))
    }

    fn open_backing(&mut self, ino: u64, flags: i32) -> Result<u64, i32> {
        let path = self.path_of(ino)?;
        // Opened for writing whatever the caller asked: an fsync through a read-only
        // descriptor must still write the file's unsynced data (the kernel checked the
        // caller's access already).
        let real = self.real(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&real)
            .or_else(|_| OpenOptions::new().read(true).open(&real))
            .map_err(|e| errno(&e))?;
        if flags & libc::O_TRUNC != 0 {
            // Truncation by open is file data: cached like a write.
            self.truncate(ino, &file, 0).map_err(|e| errno(&e))?;
        }
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, (ino, file));
        Ok(handle)
    }

    /// The unsynced state of `ino`, starting from the backing file's size.
    fn unsynced_of(&mut self, ino: u64, file: &File) -> io::Result<&mut Unsynced> {
        match self.unsynced.entry(ino) {
            std::collections::hash_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let size = file.metadata()?.len();
                Ok(entry.insert(Unsynced {
                    pages: BTreeMap::new(),
                    size,
                }))
            }
        }
    }

    /// Page `index` of `ino` as it reads now.
    fn page(&self, ino: u64, file: &File, index: u64) -> io::Result<Vec<u8>> {
        if let Some(page) = self.unsynced.get(&ino).and_then(|u| u.pages.get(&index)) {
            return Ok(page.clone());
        }
        let mut page = vec![0u8; PAGE_BYTES as usize];
        let mut filled = 0;
        while filled < page.len() {
            let read = file.read_at(&mut page[filled..], index * PAGE_BYTES + filled as u64)?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        // Past the size the file reads now (shortened by an unsynced truncation), zeros.
        if let Some(unsynced) = self.unsynced.get(&ino) {
            let end = unsynced.size.saturating_sub(index * PAGE_BYTES);
            if end < PAGE_BYTES {
                page[end as usize..].fill(0);
            }
        }
        Ok(page)
    }

    fn truncate(&mut self, ino: u64, file: &File, size: u64) -> io::Result<()> {
        let last_page = size / PAGE_BYTES;
        let tail = (size % PAGE_BYTES) as usize;
        let kept = if tail > 0 {
            let mut page = self.page(ino, file, last_page)?;
            page[tail..].fill(0);
            Some(page)
        } else {
            None
        };
        let unsynced = self.unsynced_of(ino, file)?;
        unsynced.pages.retain(|&index, _| index < last_page);
        if let Some(page) = kept {
            unsynced.pages.insert(last_page, page);
        }
        unsynced.size = size;
        Ok(())
    }

    fn read_data(&self, ino: u64, file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let size = match self.unsynced.get(&ino) {
            Some(unsynced) => unsynced.size,
            None => file.metadata()?.len(),
        };
        let end = (offset + len).min(size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let index = at / PAGE_BYTES;
            let page = self.page(ino, file, index)?;
            let from = (at % PAGE_BYTES) as usize;
            let to = (end - index * PAGE_BYTES).min(PAGE_BYTES) as usize;
            out.extend_from_slice(&page[from..to]);
            at = index * PAGE_BYTES + to as u64;
        }
        Ok(out)
    }

    fn write_data(&mut self, ino: u64, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut written = 0usize;
        while written < data.len() {
            let at = offset + written as u64;
            let index = at / PAGE_BYTES;
            let mut page = self.page(ino, file, index)?;
            let from = (at % PAGE_BYTES) as usize;
            let n = (PAGE_BYTES as usize - from).min(data.len() - written);
            page[from..from + n].copy_from_slice(&data[written..written + n]);
            let unsynced = self.unsynced_of(ino, file)?;
            unsynced.pages.insert(index, page);
            unsynced.size = unsynced.size.max(at + n as u64);
            written += n;
        }
        Ok(())
    }

    /// Makes `ino`'s unsynced data durable in the backing file.
    fn sync(&mut self, ino: u64, file: &File) -> io::Result<()> {
        if let Some(unsynced) = self.unsynced.remove(&ino) {
            for (index, page) in &unsynced.pages {
                let start = index * PAGE_BYTES;
                if start >= unsynced.size {
                    continue;
                }
                let len = (unsynced.size - start).min(PAGE_BYTES) as usize;
                file.write_all_at(&page[..len], start)?;
            }
            file.set_len(unsynced.size)?;
        }
        file.sync_data()
    }

    /// Removes `name` from the backing directory (a metadata change: at once).
    fn remove(
        &mut self,
        parent: u64,
        name: &OsStr,
        remove: fn(&Path) -> io::Result<()>,
        reply: ReplyEmpty,
    ) {
        let result = self.child(parent, name).and_then(|path| {
            remove(&self.real(&path)).map_err(|e| errno(&e))?;
            self.forget_path(&path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Forgets the inodes under `relative` (it was removed or replaced).
    fn forget_path(&mut self, relative: &Path) {
        let gone: Vec<u64> = self
            .paths
            .iter()
            .filter(|(_, p)| p.starts_with(relative))
            .map(|(&ino, _)| ino)
            .collect();
        for ino in gone {
            self.paths.remove(&ino);
            if !self.handles.values().any(|(open, _)| *open == ino) {
                self.unsynced.remove(&ino);
            }
        }
    }
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|path| self.entry(path)) {
            Ok(attr) => reply.entry(&NO_CACHE, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr_of(ino) {
            Ok(attr) => reply.attr(&NO_CACHE, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let result = (|| -> Result<FileAttr, i32> {
            let path = self.real(&self.path_of(ino)?);
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| errno(&e))?;
            }
            if let Some(size) = size {
                let file = OpenOptions::new()
                    .read(true)
                    .open(&path)
                    .map_err(|e| errno(&e))?;
                self.truncate(ino, &file, size).map_err(|e| errno(&e))?;
            }
            self.attr_of(ino)
        })();
        match result {
            Ok(attr) => reply.attr(&NO_CACHE, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.child(parent, name).and_then(|path| {
            std::fs::create_dir(self.real(&path)).map_err(|e| errno(&e))?;
            let _ =
                std::fs::set_permissions(self.real(&path), std::fs::Permissions::from_mode(mode));
            self.entry(path)
        });
        match result {
            Ok(attr) => reply.entry(&NO_CACHE, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |path| std::fs::remove_file(path), reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |path| std::fs::remove_dir(path), reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        let result = (|| -> Result<(), i32> {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            std::fs::rename(self.real(&from), self.real(&to)).map_err(|e| errno(&e))?;
            self.forget_path(&to);
            // Everything under the old path is under the new one now.
            for path in self.paths.values_mut() {
                if let Ok(rest) = path.strip_prefix(&from) {
                    *path = to.join(rest);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        match self.open_backing(ino, flags) {
            Ok(handle) => reply.opened(handle, 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| -> Result<(FileAttr, u64), i32> {
            let path = self.child(parent, name)?;
            let mut options = OpenOptions::new();
            options.read(true).write(true).create(true).mode(mode);
            if flags & libc::O_EXCL != 0 {
                options.create_new(true);
            }
            drop(options.open(self.real(&path)).map_err(|e| errno(&e))?);
            let attr = self.entry(path)?;
            let handle = self.open_backing(attr.ino, flags)?;
            Ok((self.attr_of(attr.ino)?, handle))
        })();
        match result {
            Ok((attr, handle)) => reply.created(&NO_CACHE, &attr, 0, handle, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some((ino, file)) = self.handles.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        match self.read_data(*ino, file, offset as u64, u64::from(size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some((ino, file)) = self.handles.remove(&fh) else {
            return reply.error(libc::EBADF);
        };
        let result = self.write_data(ino, &file, offset as u64, data);
        self.handles.insert(fh, (ino, file));
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some((ino, file)) = self.handles.remove(&fh) else {
            return reply.error(libc::EBADF);
        };
        let result = self.sync(ino, &file);
        self.handles.insert(fh, (ino, file));
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        // Closing a file syncs nothing.
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(&fh);
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.path_of(ino) {
            Ok(_) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let result = (|| -> Result<Vec<(u64, FileType, Vec<u8>)>, i32> {
            let path = self.path_of(ino)?;
            let mut entries = vec![
                (ino, FileType::Directory, b".".to_vec()),
                (FUSE_ROOT_ID, FileType::Directory, b"..".to_vec()),
            ];
            let read = std::fs::read_dir(self.real(&path)).map_err(|e| errno(&e))?;
            let mut named: Vec<(u64, FileType, Vec<u8>)> = read
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let metadata = entry.metadata().ok()?;
                    let name = entry.file_name().as_bytes().to_vec();
                    Some((metadata.ino(), kind_of(metadata.mode()), name))
                })
                .collect();
            named.sort_by(|a, b| a.2.cmp(&b.2));
            entries.extend(named);
            Ok(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(ino, (i + 1) as i64, kind, OsStr::from_bytes(&name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self
            .path_of(ino)
            .and_then(|path| File::open(self.real(&path)).map_err(|e| errno(&e)))
            .and_then(|dir| dir.sync_all().map_err(|e| errno(&e)));
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let path = std::ffi::CString::new(self.backing.as_os_str().as_bytes()).expect("no NUL");
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `stat` a writable statvfs.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        reply.statfs(
            stat.f_blocks,
            stat.f_bfree,
            stat.f_bavail,
            stat.f_files,
            stat.f_ffree,
            stat.f_bsize as u32,
            stat.f_namemax as u32,
            stat.f_frsize as u32,
        );
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        let Some((ino, file)) = self.handles.remove(&fh) else {
            return reply.error(libc::EBADF);
        };
        let end = (offset + length) as u64;
        let result = self.unsynced_of(ino, &file).map(|unsynced| {
            unsynced.size = unsynced.size.max(end);
        });
        self.handles.insert(fh, (ino, file));
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
