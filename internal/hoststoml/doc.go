// Package hoststoml edits the Authorization headers in containerd's
// hosts.toml files and nothing else.
//
// A hosts.toml routes pulls (server, mirrors, ca, skip_verify): whoever can
// write it can substitute images on the node. So this package changes only
// the value of the `Authorization` key in the `header` table of a host we
// hold credentials for, adds that key (or that host's header table) where it
// is missing, and keeps every other byte of the file as it was: keys,
// sections, comments, whitespace, order, line endings. The only file it
// writes from nothing names the registry itself as server. What it cannot edit
// that way it refuses, with the line, never a value.
//
// # Which containerd this follows
//
// The rules are read from containerd's own hosts code,
// remotes/docker/config/hosts.go in github.com/containerd/containerd v1.6.20
// (Debian 12's containerd) and core/remotes/docker/config/hosts.go in
// github.com/containerd/containerd/v2 v2.4.2; test/consumers judges the output
// with both.
//
//   - Folder: `<config_path>/<host>/hosts.toml`, the folder named `host_port_`
//     or `host:port`; `_default` applies to every registry and is never
//     written here.
//   - Hosts: each `[host."<url>"]` table is a host tried in file order, then
//     the top level (`server`, or the folder's registry when there is none;
//     for docker.io that is registry-1.docker.io). A host key without a
//     scheme gets `https://`; the host a header is sent to is the URL's
//     host[:port], which is how Headers is keyed here.
//   - containerd 1.6 ignores (logs "invalid `host` tree") a file without any
//     `host` table; containerd 2.x reads one. Result.NoHostTable says so, and
//     a file created here puts the header in a `[host."<server>"]` table of
//     its own, the form both read.
//   - containerd 2.x orders hosts by the `[host.X...]` table headers as they
//     come, counting a host again when its tables are not adjacent; a header
//     table added here is put right after its host's table so the order and
//     count of hosts stay the same.
//   - Header values: a string, or an array of strings sent as that many
//     header lines; the key is used as written (http.Header without
//     canonicalising), so `authorization` would be a second header line. An
//     `Authorization` key in any case is taken as the one to edit; two are
//     refused.
//   - Every request to that host carries the header: a static `Basic`
//     header authenticates against basic-auth registries from 1.6. Since
//     2.1 ("Add hosts.toml headers to auth requests") the host's headers are
//     also sent with the token request of a Bearer registry. Once a registry
//     answers 401 with a challenge, containerd's authorizer sets its own
//     Authorization (from the CRI credentials), replacing this one.
//
// Parsing and byte positions come from go-toml/v2's unstable parser (the one
// containerd 2.x uses to order hosts); every result is checked by decoding
// the old and new bytes and comparing them with the edited values removed.
package hoststoml
