-- The crawler's SQLite schema at migration 0007: what the migrations leave in an empty
-- database. GENERATED from migrations/versions/ by `make schema` (crawler.store.schema_dump);
-- do not edit. A crawl creates a brand-new database from it in one transaction.
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
CREATE TABLE images (
	region_id TEXT NOT NULL, 
	image_id TEXT NOT NULL, 
	name TEXT, 
	description TEXT, 
	architecture TEXT, 
	os_type TEXT, 
	platform TEXT, 
	os_version TEXT, 
	image_source TEXT, 
	status TEXT, 
	progress INTEGER, 
	root_device_type TEXT, 
	size_mb INTEGER, 
	system_disk_size_gb INTEGER, 
	snapshot_id TEXT, 
	created_at TEXT, 
	launch_permission TEXT, 
	owner_pin TEXT, 
	login_name TEXT, 
	offline INTEGER, 
	uefi_support INTEGER, 
	imported INTEGER, 
	boot_mode TEXT, 
	instance_id TEXT, 
	expired_at TEXT, 
	first_seen_at TEXT, 
	last_seen_at TEXT, 
	last_run_id INTEGER, 
	missing_since TEXT, 
	raw TEXT NOT NULL, 
	raw_digest BLOB, 
	answer_digest BLOB, 
	CONSTRAINT pk_images PRIMARY KEY (region_id, image_id)
);
CREATE INDEX ix_images_image_id ON images (image_id);
CREATE INDEX ix_images_image_source ON images (image_source);
CREATE INDEX ix_images_status ON images (status);
CREATE INDEX ix_images_os_type_platform ON images (os_type, platform);
CREATE INDEX ix_images_missing_since ON images (missing_since);
CREATE INDEX ix_images_last_run_id ON images (last_run_id);
CREATE TABLE disks (
	region_id TEXT NOT NULL, 
	image_id TEXT NOT NULL, 
	slot TEXT NOT NULL, 
	position INTEGER NOT NULL, 
	device_name TEXT, 
	disk_category TEXT, 
	auto_delete INTEGER, 
	mapping_status TEXT, 
	disk_type TEXT, 
	disk_size_gb INTEGER, 
	disk_id TEXT, 
	az TEXT, 
	name TEXT, 
	description TEXT, 
	status TEXT, 
	snapshot_id TEXT, 
	multi_attachable INTEGER, 
	encrypted INTEGER, 
	enabled INTEGER, 
	iops INTEGER, 
	throughput INTEGER, 
	created_at TEXT, 
	charge_mode TEXT, 
	charge_status TEXT, 
	charge_start_at TEXT, 
	charge_expired_at TEXT, 
	charge_retire_at TEXT, 
	CONSTRAINT ck_disks_slot CHECK (slot IN ('system', 'data')), 
	CONSTRAINT fk_disks_images FOREIGN KEY(region_id, image_id) REFERENCES images (region_id, image_id) ON DELETE CASCADE, 
	CONSTRAINT pk_disks PRIMARY KEY (region_id, image_id, slot, position)
);
CREATE INDEX ix_disks_disk_type ON disks (disk_type);
CREATE INDEX ix_disks_disk_id ON disks (disk_id);
CREATE TABLE attachments (
	region_id TEXT NOT NULL, 
	image_id TEXT NOT NULL, 
	slot TEXT NOT NULL, 
	position INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	attachment_id TEXT, 
	disk_id TEXT, 
	instance_id TEXT, 
	instance_type TEXT, 
	status TEXT, 
	attached_at TEXT, 
	CONSTRAINT fk_attachments_disks FOREIGN KEY(region_id, image_id, slot, position) REFERENCES disks (region_id, image_id, slot, position) ON DELETE CASCADE, 
	CONSTRAINT pk_attachments PRIMARY KEY (region_id, image_id, slot, position, seq)
);
CREATE INDEX ix_attachments_instance_id ON attachments (instance_id);
CREATE TABLE tags (
	region_id TEXT NOT NULL, 
	image_id TEXT NOT NULL, 
	slot TEXT NOT NULL, 
	position INTEGER NOT NULL, 
	"key" TEXT NOT NULL, 
	value TEXT, 
	CONSTRAINT fk_tags_disks FOREIGN KEY(region_id, image_id, slot, position) REFERENCES disks (region_id, image_id, slot, position) ON DELETE CASCADE, 
	CONSTRAINT pk_tags PRIMARY KEY (region_id, image_id, slot, position, "key")
);
CREATE INDEX ix_tags_key_value ON tags ("key", value);
CREATE TABLE "crawl_runs" (
	run_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	started_at TEXT NOT NULL, 
	finished_at TEXT, 
	status TEXT NOT NULL, 
	targets_total INTEGER DEFAULT 0 NOT NULL, 
	fetched INTEGER DEFAULT 0 NOT NULL, 
	missing INTEGER DEFAULT 0 NOT NULL, 
	failed INTEGER DEFAULT 0 NOT NULL, 
	requests INTEGER DEFAULT 0 NOT NULL, 
	retries INTEGER DEFAULT 0 NOT NULL, 
	strategy TEXT, 
	message TEXT, 
	CONSTRAINT ck_crawl_runs_status CHECK (status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted', 'held'))
);
CREATE TABLE "crawl_targets" (
	run_id INTEGER NOT NULL, 
	region_id TEXT NOT NULL, 
	image_id TEXT NOT NULL, 
	claims INTEGER DEFAULT '0' NOT NULL, 
	lease_owner TEXT, 
	lease_expires_at TEXT, 
	CONSTRAINT fk_crawl_targets_crawl_runs FOREIGN KEY(run_id) REFERENCES crawl_runs (run_id) ON DELETE CASCADE, 
	CONSTRAINT pk_crawl_targets PRIMARY KEY (run_id, region_id, image_id)
)
 WITHOUT ROWID

;
CREATE TABLE image_versions (
	region_id TEXT NOT NULL, 
	image_id TEXT NOT NULL, 
	version INTEGER NOT NULL, 
	valid_from_run INTEGER NOT NULL, 
	valid_to_run INTEGER, 
	status TEXT NOT NULL, 
	content_hash TEXT NOT NULL, 
	content JSON NOT NULL, 
	recorded_at TEXT NOT NULL, 
	CONSTRAINT ck_image_versions_status CHECK (status IN ('present', 'missing')), 
	CONSTRAINT pk_image_versions PRIMARY KEY (region_id, image_id, version)
);
CREATE INDEX ix_image_versions_valid_from_run ON image_versions (valid_from_run);
CREATE TABLE rate_budgets (
	key_id TEXT NOT NULL, 
	next_free_s FLOAT DEFAULT '0' NOT NULL, 
	held_until_s FLOAT DEFAULT '0' NOT NULL, 
	CONSTRAINT pk_rate_budgets PRIMARY KEY (key_id)
);
CREATE TABLE "crawl_results" (
	run_id INTEGER NOT NULL, 
	region_id TEXT NOT NULL, 
	image_id TEXT NOT NULL, 
	outcome TEXT NOT NULL, 
	http_status INTEGER, 
	error_status TEXT, 
	error_message TEXT, 
	attempts INTEGER NOT NULL, 
	request_id TEXT, 
	finished_at TEXT NOT NULL GENERATED ALWAYS AS (datetime(finished_us / 1000000, 'unixepoch') || printf('.%06d', finished_us % 1000000)) VIRTUAL, 
	finished_us INTEGER NOT NULL, 
	CONSTRAINT ck_crawl_results_outcome CHECK (outcome IN ('fetched', 'missing', 'failed')), 
	CONSTRAINT fk_crawl_results_crawl_runs FOREIGN KEY(run_id)
                REFERENCES crawl_runs (run_id) ON DELETE CASCADE, 
	CONSTRAINT pk_crawl_results PRIMARY KEY (run_id, region_id, image_id)
) WITHOUT ROWID
    ;
CREATE VIEW image_summary AS SELECT i.region_id, i.image_id, i.name, i.os_type, i.os_version, i.platform,
               i.architecture, i.image_source, i.status, i.created_at, i.missing_since,
               i.last_seen_at,
               sd.disk_category AS system_disk_category,
               sd.disk_type AS system_disk_type,
               COALESCE(sd.disk_size_gb, i.system_disk_size_gb) AS system_disk_size_gb,
               (SELECT COUNT(*) FROM disks AS d
                 WHERE d.region_id = i.region_id AND d.image_id = i.image_id
                   AND d.slot = 'data') AS data_disk_count,
               (SELECT COALESCE(SUM(d.disk_size_gb), 0) FROM disks AS d
                 WHERE d.region_id = i.region_id AND d.image_id = i.image_id
                   AND d.slot = 'data') AS data_disk_total_gb
          FROM images AS i
          LEFT JOIN disks AS sd
            ON sd.region_id = i.region_id AND sd.image_id = i.image_id
           AND sd.slot = 'system' AND sd.position = 0;
CREATE VIEW images_by_region_os AS SELECT region_id, os_type, platform, COUNT(*) AS images,
               COUNT(missing_since) AS missing
          FROM images
         GROUP BY region_id, os_type, platform;
CREATE VIEW images_not_ready AS SELECT region_id, image_id, name, image_source, status, progress, created_at,
               last_seen_at
          FROM images
         WHERE missing_since IS NULL AND (status IS NULL OR status <> 'ready');
CREATE VIEW shared_or_marketplace_images AS SELECT region_id, image_id, name, image_source, owner_pin, launch_permission,
               os_type, platform, status, missing_since
          FROM images
         WHERE image_source IN ('shared', 'share', 'community', 'thirdparty', 'marketplace');
CREATE VIEW missing_images AS SELECT region_id, image_id, name, os_type, platform, image_source, status,
               missing_since, last_seen_at, last_run_id
          FROM images
         WHERE missing_since IS NOT NULL;
CREATE VIEW data_disks_by_type AS SELECT disk_type, disk_size_gb, COUNT(*) AS disks,
               COUNT(DISTINCT region_id || '/' || image_id) AS images
          FROM disks
         WHERE slot = 'data'
         GROUP BY disk_type, disk_size_gb;
CREATE VIEW attached_disks AS SELECT a.region_id, a.image_id, a.slot, a.position, a.seq, d.device_name,
               COALESCE(a.disk_id, d.disk_id) AS disk_id, d.disk_type, d.disk_size_gb,
               a.attachment_id, a.instance_id, a.instance_type, a.status, a.attached_at
          FROM attachments AS a
          JOIN disks AS d
            ON d.region_id = a.region_id AND d.image_id = a.image_id
           AND d.slot = a.slot AND d.position = a.position;
CREATE VIEW tag_keys AS SELECT "key", COUNT(*) AS disks, COUNT(DISTINCT value) AS distinct_values
          FROM tags
         GROUP BY "key";
CREATE VIEW latest_run AS SELECT run_id, started_at, finished_at, status, targets_total, fetched, missing,
               failed, requests, retries, strategy, message
          FROM crawl_runs
         ORDER BY run_id DESC
         LIMIT 1;
CREATE VIEW latest_run_failures AS SELECT r.run_id, r.region_id, r.image_id, r.http_status, r.error_status,
               r.error_message, r.attempts, r.request_id, r.finished_at
          FROM crawl_results AS r
         WHERE r.run_id = (SELECT MAX(run_id) FROM crawl_runs) AND r.outcome = 'failed';
CREATE VIEW newly_missing_images AS SELECT m.region_id, m.image_id, m.name, m.os_type, m.platform, m.image_source,
               m.status, m.missing_since, m.last_seen_at, m.last_run_id
          FROM missing_images AS m
         WHERE m.missing_since >= (SELECT started_at FROM latest_run);
CREATE VIEW image_changes AS SELECT v.region_id, v.image_id, v.version, v.valid_from_run AS run_id,
               r.started_at AS run_started_at, r.finished_at AS run_finished_at,
               CASE WHEN p.version IS NULL THEN 'added'
                    WHEN v.status = 'missing' THEN 'removed'
                    WHEN p.status = 'missing' THEN 'restored'
                    ELSE 'changed' END AS change,
               v.status, v.content_hash, p.content_hash AS previous_content_hash,
               v.valid_to_run, v.recorded_at
          FROM image_versions AS v
          LEFT JOIN image_versions AS p
            ON p.region_id = v.region_id AND p.image_id = v.image_id
           AND p.version = v.version - 1
          LEFT JOIN crawl_runs AS r ON r.run_id = v.valid_from_run;
CREATE VIEW versioned_images AS SELECT v.region_id, v.image_id, v.version, v.valid_from_run, v.valid_to_run, v.status AS version_status, json_extract(v.content, '$.image[0]') AS name, json_extract(v.content, '$.image[1]') AS description, json_extract(v.content, '$.image[2]') AS architecture, json_extract(v.content, '$.image[3]') AS os_type, json_extract(v.content, '$.image[4]') AS platform, json_extract(v.content, '$.image[5]') AS os_version, json_extract(v.content, '$.image[6]') AS image_source, json_extract(v.content, '$.image[7]') AS status, json_extract(v.content, '$.image[8]') AS progress, json_extract(v.content, '$.image[9]') AS root_device_type, json_extract(v.content, '$.image[10]') AS size_mb, json_extract(v.content, '$.image[11]') AS system_disk_size_gb, json_extract(v.content, '$.image[12]') AS snapshot_id, json_extract(v.content, '$.image[13]') AS created_at, json_extract(v.content, '$.image[14]') AS launch_permission, json_extract(v.content, '$.image[15]') AS owner_pin, json_extract(v.content, '$.image[16]') AS login_name, json_extract(v.content, '$.image[17]') AS offline, json_extract(v.content, '$.image[18]') AS uefi_support, json_extract(v.content, '$.image[19]') AS imported, json_extract(v.content, '$.image[20]') AS boot_mode, json_extract(v.content, '$.image[21]') AS instance_id, json_extract(v.content, '$.image[22]') AS expired_at FROM image_versions AS v;
CREATE VIEW versioned_disks AS SELECT v.region_id, v.image_id, v.version, v.valid_from_run, v.valid_to_run, v.status AS version_status, c.key AS disk, json_extract(c.value, '$[0]') AS device_name, json_extract(c.value, '$[1]') AS disk_category, json_extract(c.value, '$[2]') AS auto_delete, json_extract(c.value, '$[3]') AS mapping_status, json_extract(c.value, '$[4]') AS disk_type, json_extract(c.value, '$[5]') AS disk_size_gb, json_extract(c.value, '$[6]') AS disk_id, json_extract(c.value, '$[7]') AS az, json_extract(c.value, '$[8]') AS name, json_extract(c.value, '$[9]') AS description, json_extract(c.value, '$[10]') AS status, json_extract(c.value, '$[11]') AS snapshot_id, json_extract(c.value, '$[12]') AS multi_attachable, json_extract(c.value, '$[13]') AS encrypted, json_extract(c.value, '$[14]') AS enabled, json_extract(c.value, '$[15]') AS iops, json_extract(c.value, '$[16]') AS throughput, json_extract(c.value, '$[17]') AS created_at, json_extract(c.value, '$[18]') AS charge_mode, json_extract(c.value, '$[19]') AS charge_status, json_extract(c.value, '$[20]') AS charge_start_at, json_extract(c.value, '$[21]') AS charge_expired_at, json_extract(c.value, '$[22]') AS charge_retire_at FROM image_versions AS v JOIN json_each(v.content, '$.disks') AS c;
CREATE VIEW versioned_attachments AS SELECT v.region_id, v.image_id, v.version, v.valid_from_run, v.valid_to_run, v.status AS version_status, c.key AS attachment, json_extract(c.value, '$[0]') AS attachment_id, json_extract(c.value, '$[1]') AS disk_id, json_extract(c.value, '$[2]') AS instance_id, json_extract(c.value, '$[3]') AS instance_type, json_extract(c.value, '$[4]') AS status, json_extract(c.value, '$[5]') AS attached_at FROM image_versions AS v JOIN json_each(v.content, '$.attachments') AS c;
INSERT INTO "alembic_version" VALUES ('0007');
INSERT INTO "sqlite_sequence" VALUES ('crawl_runs', 0);
