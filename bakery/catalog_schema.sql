CREATE TABLE IF NOT EXISTS versions (
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'ready')),
    created TEXT NOT NULL,
    run_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    image_ref TEXT,
    image_id TEXT,
    input_digest TEXT,
    git_commit TEXT,
    provenance TEXT,
    PRIMARY KEY (image, version),
    UNIQUE (image, seq)
);
CREATE INDEX IF NOT EXISTS versions_by_input ON versions (image, input_digest);
CREATE TABLE IF NOT EXISTS version_layers (
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    role_digest TEXT NOT NULL,
    layer_key TEXT NOT NULL,
    cached INTEGER NOT NULL,
    PRIMARY KEY (image, version, position),
    FOREIGN KEY (image, version) REFERENCES versions (image, version) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS layers (
    layer_key TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    role TEXT NOT NULL,
    ref TEXT NOT NULL,
    image_id TEXT NOT NULL,
    parent TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS verifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    env TEXT,
    started TEXT NOT NULL,
    seconds REAL NOT NULL,
    passed INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    summary TEXT NOT NULL,
    reports TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'container' CHECK (kind IN ('container', 'vm', 'aws'))
);
CREATE INDEX IF NOT EXISTS verifications_by_version ON verifications (image, version);
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    env TEXT NOT NULL,
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    previous_version TEXT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('in_progress', 'succeeded', 'failed', 'rolled_back', 'abandoned')),
    started TEXT NOT NULL,
    finished TEXT,
    seconds REAL,
    user TEXT NOT NULL,
    forced INTEGER NOT NULL DEFAULT 0,
    run_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    config_digest TEXT,
    reason TEXT,
    details TEXT
);
CREATE INDEX IF NOT EXISTS releases_by_env ON releases (env, id);
CREATE TABLE IF NOT EXISTS bases (
    ref TEXT PRIMARY KEY,
    release TEXT NOT NULL,
    digest TEXT NOT NULL,
    created TEXT NOT NULL,
    updates TEXT
);
CREATE TABLE IF NOT EXISTS disks (
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    format TEXT NOT NULL CHECK (format IN ('raw', 'qcow2')),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    allocated INTEGER NOT NULL,
    created TEXT NOT NULL,
    run_id TEXT NOT NULL,
    details TEXT NOT NULL,
    PRIMARY KEY (image, version, format),
    FOREIGN KEY (image, version) REFERENCES versions (image, version) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS disk_blocks (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    digests TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS version_packages (
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    package TEXT NOT NULL,
    package_version TEXT NOT NULL,
    PRIMARY KEY (image, version, package),
    FOREIGN KEY (image, version) REFERENCES versions (image, version) ON DELETE CASCADE
);
