package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func syncFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("sync", pflag.ContinueOnError)
	SyncFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestLoadSyncDefaults(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	t.Setenv("NODE_NAME", "node-a")
	c, err := LoadSync(syncFlags(t))
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != "secret" || c.Namespace != "nodecreds" || !slices.Equal(c.Secrets, []string{"registry-credentials"}) ||
		c.HostRoot != "/" || !slices.Equal(c.Targets, DefaultTargets()) || c.StateDir != "/var/lib/nodecreds" ||
		c.NodeName != "node-a" || !c.Prune || c.Once || c.Resync != 5*time.Minute || c.MetricsAddr != ":9102" ||
		c.Format != "json" || c.Level != "info" || c.ExpiryWarnShare != 0.1 || c.ExpiryWarnMin != 15*time.Minute {
		t.Errorf("defaults = %+v", c)
	}
}

// TestLoadSyncExpiryWarning: the expiry warning's share and minimum come
// from the file, the environment and flags like every other setting.
func TestLoadSyncExpiryWarning(t *testing.T) {
	file := filepath.Join(t.TempDir(), "nodecreds.yaml")
	if err := os.WriteFile(file, []byte("expiry-warn-share: 0.25\nexpiry-warn-min: 5m\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadSync(syncFlags(t, "--config", file))
	if err != nil || c.ExpiryWarnShare != 0.25 || c.ExpiryWarnMin != 5*time.Minute {
		t.Errorf("from the file: %+v, %v", c, err)
	}
	t.Setenv("NODECREDS_EXPIRY_WARN_SHARE", "0.5")
	c, err = LoadSync(syncFlags(t, "--config", file, "--expiry-warn-min", "2s"))
	if err != nil || c.ExpiryWarnShare != 0.5 || c.ExpiryWarnMin != 2*time.Second {
		t.Errorf("from the environment and a flag: %+v, %v", c, err)
	}
}

func TestLoadSyncPrecedence(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(t.TempDir(), "nodecreds.yaml")
	yaml := "source: dir\nsecret-dir: [/from/file]\nresync: 1m\nprune: false\nlog-level: warn\ntarget: /a/config.json,/b/config.json\nnamespace: from-file\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODECREDS_RESYNC", "2m")
	t.Setenv("NODECREDS_LOG_LEVEL", "debug")
	t.Setenv("NODECREDS_HOST_ROOT", root)
	t.Setenv("POD_NAMESPACE", "from-env")
	c, err := LoadSync(syncFlags(t, "--config", file, "--log-level", "error", "--secret-dir", "/from/flag"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != "dir" || c.Prune || c.Namespace != "from-file" {
		t.Errorf("file values not used: %+v", c)
	}
	if c.Resync != 2*time.Minute || c.HostRoot != root {
		t.Errorf("environment does not beat the file: resync %s root %s", c.Resync, c.HostRoot)
	}
	if c.Level != "error" || !slices.Equal(c.SecretDirs, []string{"/from/flag"}) {
		t.Errorf("flags do not beat everything: level %s dirs %v", c.Level, c.SecretDirs)
	}
	if !slices.Equal(c.Targets, []string{"/a/config.json", "/b/config.json"}) {
		t.Errorf("comma list from file = %v", c.Targets)
	}
}

func TestLoadSyncEnvList(t *testing.T) {
	t.Setenv("NODECREDS_SOURCE", "dir")
	t.Setenv("NODECREDS_SECRET_DIR", "/s1,/s2")
	t.Setenv("NODECREDS_PRUNE", "false")
	c, err := LoadSync(syncFlags(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.SecretDirs, []string{"/s1", "/s2"}) || c.Prune {
		t.Errorf("env = %+v", c)
	}
}

// The agent's pool comes from --pool or NODECREDS_POOL (the chart sets it
// per DaemonSet), its Pod's name from $POD_NAME, else the host name (a
// Pod's host name is its name): they name the agent to another one met on
// the same node.
func TestLoadSyncPoolAndPod(t *testing.T) {
	host, _ := os.Hostname()
	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		pool, pod string
	}{
		{"defaults", nil, map[string]string{"POD_NAME": ""}, "", host},
		{"flag", []string{"--pool", "tenant-a"}, map[string]string{"POD_NAME": "nodecreds-tenant-a-x7k2p"}, "tenant-a", "nodecreds-tenant-a-x7k2p"},
		{"environment", nil, map[string]string{"NODECREDS_POOL": "tenant-b", "POD_NAME": "p"}, "tenant-b", "p"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := LoadSync(syncFlags(t, tc.args...))
			if err != nil {
				t.Fatal(err)
			}
			if c.Pool != tc.pool || c.PodName != tc.pod {
				t.Errorf("pool %q pod %q, want %q %q", c.Pool, c.PodName, tc.pool, tc.pod)
			}
		})
	}
}

func TestLoadSyncRefusesBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		yaml string
		env  map[string]string
		want string
	}{
		{name: "unknown source", args: []string{"--source", "http"}, want: `--source "http"`},
		{name: "dir without folders", args: []string{"--source", "dir"}, want: "needs --secret-dir"},
		{name: "secret-dir with secret source", args: []string{"--secret-dir", "/x"}, want: "goes with --source dir"},
		{name: "relative target", args: []string{"--target", "config.json"}, want: "absolute node path"},
		{name: "duplicate target", args: []string{"--target", "/a/c.json,/a/c.json"}, want: "listed twice"},
		{name: "short resync", args: []string{"--resync", "10ms"}, want: "at least 1s"},
		{name: "bad log format", args: []string{"--log-format", "xml"}, want: "--log-format"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, want: "--log-level"},
		{name: "missing host root", args: []string{"--host-root", "/does/not/exist"}, want: "--host-root"},
		{name: "bad secret name", args: []string{"--secret", "a/b"}, want: "not a Secret name"},
		{name: "unknown key in file", yaml: "source: dir\nsecret-dirs: [/x]\n", want: "unknown settings secret-dirs"},
		{name: "wrong type in file", yaml: "prune: maybe\n", want: "prune"},
		{name: "bad duration in file", yaml: "resync: soon\n", want: "resync"},
		{name: "not yaml", yaml: "source: [dir\n", want: "reading --config"},
		{name: "bad env value", env: map[string]string{"NODECREDS_ONCE": "perhaps"}, want: "once"},
		{name: "relative plugin folder", args: []string{"--install-credential-provider", "opt/bin"}, want: "--install-credential-provider"},
		{name: "expiry share of 1", args: []string{"--expiry-warn-share", "1"}, want: "--expiry-warn-share"},
		{name: "negative expiry share from env", env: map[string]string{"NODECREDS_EXPIRY_WARN_SHARE": "-0.1"}, want: "--expiry-warn-share"},
		{name: "negative expiry minimum", args: []string{"--expiry-warn-min", "-1m"}, want: "--expiry-warn-min"},
		{name: "pool not a DNS label", args: []string{"--pool", "Tenant_A"}, want: "--pool"},
		{name: "pool from env not a DNS label", env: map[string]string{"NODECREDS_POOL": "a/b"}, want: "--pool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadSync(syncFlags(t, setting(t, tt.env, tt.yaml, tt.args)...))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrUsage) {
				t.Errorf("error %v is not a usage error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

// setting puts env in the environment for the test and, when yaml is
// not empty, a file of it after args as --config; it returns the
// arguments.
func setting(t *testing.T, env map[string]string, yaml string, args []string) []string {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	if yaml == "" {
		return args
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return append(slices.Clone(args), "--config", file)
}

func TestLoadCheck(t *testing.T) {
	fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
	CheckFlags(fs)
	if err := fs.Parse([]string{"-o", "json", "--image", "a/b,c/d"}); err != nil {
		t.Fatal(err)
	}
	c, err := LoadCheck(fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Output != "json" || !slices.Equal(c.Images, []string{"a/b", "c/d"}) || c.KubeletRootDir != "/var/lib/kubelet" {
		t.Errorf("check = %+v", c)
	}

	fs = pflag.NewFlagSet("check", pflag.ContinueOnError)
	CheckFlags(fs)
	_ = fs.Parse(nil)
	if _, err := LoadCheck(fs); !errors.Is(err, ErrUsage) {
		t.Errorf("check without images: %v, want a usage error", err)
	}
}

func TestLoadCheckRuntime(t *testing.T) {
	tests := []struct {
		args  []string
		usage bool
	}{
		{[]string{"--runtime", "containerd", "--sandbox"}, false},
		{[]string{"--runtime", "containerd", "--image", "a/b", "--containerd-certs-dir", "/srv/certs.d", "--runtime-version", "containerd://2.1.0"}, false},
		{[]string{"--sandbox", "--image", "a/b"}, true},
		{[]string{"--runtime", "cri-o", "--image", "a/b"}, true},
		{[]string{"--runtime", "containerd", "--image", "a/b", "--containerd-config", "etc/containerd/config.toml"}, true},
		{[]string{"--runtime", "containerd"}, true},
	}
	for _, tt := range tests {
		fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
		CheckFlags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		c, err := LoadCheck(fs)
		if got := errors.Is(err, ErrUsage); got != tt.usage {
			t.Errorf("check %v: %v, want usage error %v", tt.args, err, tt.usage)
		}
		if err == nil && (c.ContainerdConfig != DefaultContainerdConfig || c.StateDir != DefaultStateDir) {
			t.Errorf("check %v: defaults %+v", tt.args, c)
		}
	}
}

// TestLoadCheckServiceAccount: --service-account NS/NAME is split, needs
// --image, and refuses every flag about the node's files (they would be
// ignored); --kubeconfig goes only with it.
func TestLoadCheckServiceAccount(t *testing.T) {
	tests := []struct {
		args []string
		want string // "" : valid
	}{
		{[]string{"--service-account", "team-a/puller", "--image", "r.test/a", "--kubeconfig", "/k", "-o", "json", "--timeout", "3s"}, ""},
		{[]string{"--service-account", "puller", "--image", "r.test/a"}, "must be NAMESPACE/NAME"},
		{[]string{"--service-account", "a/b/c", "--image", "r.test/a"}, "must be NAMESPACE/NAME"},
		{[]string{"--service-account", "Team/puller", "--image", "r.test/a"}, "not a namespace name"},
		{[]string{"--service-account", "team/", "--image", "r.test/a"}, "not a ServiceAccount name"},
		{[]string{"--service-account", "team/puller"}, "needs --image"},
		{[]string{"--service-account", "team/puller", "--image", "r.test/a", "--registry", "r.test"}, "--registry does not go with --service-account"},
		{[]string{"--service-account", "team/puller", "--image", "r.test/a", "--probe"}, "--probe does not go with"},
		{[]string{"--service-account", "team/puller", "--image", "r.test/a", "--host-root", "/tmp"}, "--host-root does not go with"},
		{[]string{"--service-account", "team/puller", "--image", "r.test/a", "--kubelet-root-dir", "/srv/kubelet"}, "--kubelet-root-dir does not go with"},
		{[]string{"--service-account", "team/puller", "--image", "r.test/a", "--runtime", "containerd"}, "--runtime does not go with"},
		{[]string{"--service-account", "team/puller", "--image", "r.test/a", "--state-dir", "/srv/state"}, "--state-dir does not go with"},
		{[]string{"--image", "r.test/a", "--kubeconfig", "/k"}, "--kubeconfig goes with --service-account"},
	}
	for _, tt := range tests {
		fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
		CheckFlags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		c, err := LoadCheck(fs)
		if tt.want == "" {
			if err != nil || c.SANamespace != "team-a" || c.SAName != "puller" || c.Kubeconfig != "/k" || c.Timeout != 3*time.Second {
				t.Errorf("check %v: %+v, %v", tt.args, c, err)
			}
			continue
		}
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("check %v: error %v, want a usage error mentioning %q", tt.args, err, tt.want)
		}
	}
}

func providerFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("credential-provider", pflag.ContinueOnError)
	ProviderFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestLoadProvider(t *testing.T) {
	c, err := LoadProvider(providerFlags(t))
	if err != nil {
		t.Fatal(err)
	}
	if c.HostRoot != "/" || c.File != "/var/lib/kubelet/config.json" || c.CacheDuration != time.Second {
		t.Errorf("defaults = %+v", c)
	}

	// The kubelet passes its environment through: NODECREDS_* and a
	// --config file work as for every command, flags first.
	root := t.TempDir()
	file := filepath.Join(t.TempDir(), "provider.yaml")
	if err := os.WriteFile(file, []byte("file: /etc/nodecreds/config.json\ncache-duration: 1m\nhost-root: /nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODECREDS_HOST_ROOT", root)
	t.Setenv("NODECREDS_CACHE_DURATION", "30s")
	c, err = LoadProvider(providerFlags(t, "--config", file, "--cache-duration", "0s"))
	if err != nil {
		t.Fatal(err)
	}
	if c.File != "/etc/nodecreds/config.json" || c.HostRoot != root || c.CacheDuration != 0 {
		t.Errorf("precedence: %+v", c)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--cache-duration", "-1s"}, "must not be negative"},
		{[]string{"--file", "config.json"}, "absolute node path"},
		{[]string{"--host-root", "/does/not/exist"}, "--host-root"},
	} {
		t.Setenv("NODECREDS_HOST_ROOT", "")
		_, err := LoadProvider(providerFlags(t, tt.args...))
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want a usage error mentioning %q", tt.args, err, tt.want)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(bad, []byte("cache: 1s\n"), 0o600)
	if _, err := LoadProvider(providerFlags(t, "--config", bad)); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "unknown settings cache") {
		t.Errorf("unknown key: %v", err)
	}
}

// TestLoadProviderServiceAccount: the service-account-token mode needs an
// https API server and a CA, each given or from the kubelet's kubeconfig,
// and a timeout inside the kubelet's; its cache defaults to 10s unless set
// (flag, environment or file); its flags alone, without the mode, are
// refused, since that entry would answer with the node's credentials.
func TestLoadProviderServiceAccount(t *testing.T) {
	kc := "--kubelet-kubeconfig=/etc/kubernetes/kubelet.conf"
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		file  string // --config content
		want  func(Provider) bool
		usage string // in the usage error; "" for none
	}{
		{name: "kubelet kubeconfig alone", args: []string{"--service-account", kc}, want: func(c Provider) bool {
			return c.ServiceAccount && c.KubeletKubeconfig == "/etc/kubernetes/kubelet.conf" && c.CacheDuration == 10*time.Second &&
				c.APITimeout == 10*time.Second && c.StateDir == "/var/lib/nodecreds" && c.APIServer == "" && c.APICAFile == ""
		}},
		{name: "server and CA", args: []string{"--service-account", "--api-server=https://10.0.0.1:6443", "--api-ca-file=/etc/kubernetes/pki/ca.crt"}, want: func(c Provider) bool {
			return c.APIServer == "https://10.0.0.1:6443" && c.APICAFile == "/etc/kubernetes/pki/ca.crt"
		}},
		{name: "cache set by flag", args: []string{"--service-account", kc, "--cache-duration=3s"}, want: func(c Provider) bool { return c.CacheDuration == 3*time.Second }},
		{name: "cache set to 1s by flag", args: []string{"--service-account", kc, "--cache-duration=1s"}, want: func(c Provider) bool { return c.CacheDuration == time.Second }},
		{name: "cache set by environment", args: []string{"--service-account", kc}, env: map[string]string{"NODECREDS_CACHE_DURATION": "0s"}, want: func(c Provider) bool { return c.CacheDuration == 0 }},
		{name: "mode and cache from the file", file: "service-account: true\nkubelet-kubeconfig: /k.conf\ncache-duration: 4s\napi-timeout: 20s\n", want: func(c Provider) bool {
			return c.ServiceAccount && c.CacheDuration == 4*time.Second && c.APITimeout == 20*time.Second
		}},
		{name: "mode from the environment", env: map[string]string{"NODECREDS_SERVICE_ACCOUNT": "true", "NODECREDS_KUBELET_KUBECONFIG": "/k.conf"}, want: func(c Provider) bool {
			return c.ServiceAccount && c.CacheDuration == 10*time.Second
		}},
		{name: "node-wide cache unchanged", want: func(c Provider) bool { return !c.ServiceAccount && c.CacheDuration == time.Second }},
		{name: "no server", args: []string{"--service-account", "--api-ca-file=/ca.crt"}, usage: "--api-server or --kubelet-kubeconfig"},
		{name: "no CA", args: []string{"--service-account", "--api-server=https://a.test"}, usage: "--api-ca-file or --kubelet-kubeconfig"},
		{name: "nothing", args: []string{"--service-account"}, usage: "needs the API server"},
		{name: "http", args: []string{"--service-account", kc, "--api-server=http://10.0.0.1:8080"}, usage: "must be an https:// URL"},
		{name: "no host", args: []string{"--service-account", kc, "--api-server=https://"}, usage: "must be an https:// URL"},
		{name: "user in the URL is not echoed", args: []string{"--service-account", kc, "--api-server=https://me:hunter2@a.test"}, usage: "without a user"},
		{name: "query", args: []string{"--service-account", kc, "--api-server=https://a.test/?x=1"}, usage: "without query"},
		{name: "relative CA", args: []string{"--service-account", kc, "--api-ca-file=ca.crt"}, usage: "--api-ca-file \"ca.crt\": must be an absolute node path"},
		{name: "relative kubeconfig", args: []string{"--service-account", "--kubelet-kubeconfig=kubelet.conf"}, usage: "--kubelet-kubeconfig"},
		{name: "relative state dir", args: []string{"--service-account", kc, "--state-dir=state"}, usage: "--state-dir"},
		{name: "zero timeout", args: []string{"--service-account", kc, "--api-timeout=0s"}, usage: "--api-timeout 0s: must be more than 0 and less than 50s"},
		{name: "timeout at the kubelet's", args: []string{"--service-account", kc, "--api-timeout=50s"}, usage: "--api-timeout 50s"},
		{name: "negative cache", args: []string{"--service-account", kc, "--cache-duration=-1s"}, usage: "--cache-duration"},
		{name: "server without the mode", args: []string{"--api-server=https://a.test"}, usage: "--api-server: only with --service-account"},
		{name: "kubeconfig without the mode", args: []string{kc}, usage: "--kubelet-kubeconfig: only with --service-account"},
		{name: "CA without the mode, from the environment", env: map[string]string{"NODECREDS_API_CA_FILE": "/ca.crt"}, usage: "--api-ca-file: only with --service-account"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadProvider(providerFlags(t, setting(t, tt.env, tt.file, tt.args)...))
			if tt.usage != "" {
				if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.usage) {
					t.Fatalf("error %v, want a usage error mentioning %q", err, tt.usage)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("the error echoes a password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.want(c) {
				t.Errorf("settings %+v", c)
			}
		})
	}
}

// The consistent names: credential-provider --target is --file (one of
// sync's --target files), check --probe-timeout is --timeout (per probe;
// status's --timeout is the whole wait).
func TestFlagAliases(t *testing.T) {
	c, err := LoadProvider(providerFlags(t, "--target", "/srv/kubelet/config.json"))
	if err != nil || c.File != "/srv/kubelet/config.json" {
		t.Errorf("credential-provider --target: %+v, %v", c, err)
	}
	fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
	CheckFlags(fs)
	if err := fs.Parse([]string{"--image", "a/b", "--probe-timeout", "3s"}); err != nil {
		t.Fatal(err)
	}
	chk, err := LoadCheck(fs)
	if err != nil || chk.Timeout != 3*time.Second {
		t.Errorf("check --probe-timeout: %+v, %v", chk, err)
	}
}

// TestSyncRefusesTargetsInSystemFolders: the DaemonSet mounts each target's
// folder read-write from the host, so a target in / or in a folder whose
// write access hands over the node (programs, libraries, boot, devices,
// kernel and service settings, static Pods, homes, shared scratch) is a
// usage error naming the folder and why; the usual targets still load.
func TestSyncRefusesTargetsInSystemFolders(t *testing.T) {
	refused := []string{
		"/config.json", "/./config.json", "/bin/config.json", "/sbin/c.json", "/boot/c.json", "/boot/efi/c.json",
		"/dev/c.json", "/dev/shm/c.json", "/etc/config.json", "/etc/kubernetes/config.json", "/etc/kubernetes/manifests/c.json",
		"/etc/systemd/system/c.json", "/etc/cron.d/c.json", "/etc/sudoers.d/c.json", "/etc/ssh/c.json", "/lib/c.json",
		"/lib64/c.json", "/lib/systemd/system/c.json", "/proc/c.json", "/proc/1/c.json", "/run/c.json", "/var/run/c.json",
		"/sys/c.json", "/sys/fs/cgroup/c.json", "/usr/c.json", "/usr/local/bin/c.json", "/usr/libexec/x/c.json",
		"/var/c.json", "/var/lib/c.json", "/var/spool/cron/c.json", "/root/c.json", "/root/.ssh/c.json", "/home/c.json",
		"/opt/c.json", "/tmp/c.json", "/var/tmp/c.json", "/srv/c.json", "/mnt/c.json", "/etc/../etc/c.json",
	}
	for _, target := range refused {
		t.Run(target, func(t *testing.T) {
			_, err := LoadSync(syncFlags(t, "--target", "/var/lib/kubelet/config.json,"+target))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), target) || !strings.Contains(err.Error(), "system folder") {
				t.Errorf("error %q: want a usage error naming %s as in a system folder", err, target)
			}
		})
	}
	for _, target := range []string{
		"/var/lib/kubelet/config.json", "/root/.docker/config.json", "/etc/containers/auth.json", "/run/containers/0/auth.json",
		"/home/ci/.docker/config.json", "/opt/registry/config.json", "/var/lib/nodecreds-extra/config.json", "/srv/creds/config.json",
	} {
		if _, err := LoadSync(syncFlags(t, "--target", target)); err != nil {
			t.Errorf("--target %s refused: %v", target, err)
		}
	}
	if _, err := LoadSync(syncFlags(t, "--state-dir", "/var/lib")); err == nil || !strings.Contains(err.Error(), "system folder") {
		t.Errorf("--state-dir /var/lib: %v, want it refused as a system folder", err)
	}
}

func TestSyncContainerdCertsDir(t *testing.T) {
	c, err := LoadSync(syncFlags(t))
	if err != nil || c.ContainerdCertsDir != "" {
		t.Fatalf("default: %q %v, want off", c.ContainerdCertsDir, err)
	}
	for _, dir := range []string{"/etc/containerd/certs.d", "/etc/containerd/certs.d/", "/var/lib/containerd-hosts"} {
		c, err := LoadSync(syncFlags(t, "--containerd-certs-dir", dir))
		if err != nil || c.ContainerdCertsDir != dir {
			t.Errorf("--containerd-certs-dir %s: %q %v", dir, c.ContainerdCertsDir, err)
		}
	}
	t.Setenv("NODECREDS_CONTAINERD_CERTS_DIR", "/etc/containerd/certs.d")
	if c, err := LoadSync(syncFlags(t)); err != nil || c.ContainerdCertsDir != "/etc/containerd/certs.d" {
		t.Errorf("from the environment: %q %v", c.ContainerdCertsDir, err)
	}
	t.Setenv("NODECREDS_CONTAINERD_CERTS_DIR", "")
	for dir, why := range map[string]string{
		"etc/containerd/certs.d":                "absolute",
		"/etc/containerd/certs.d/../../systemd": "..",
		"/etc":                                  "system folder",
		"/etc/systemd/system":                   "system folder",
		"/":                                     "system folder",
	} {
		_, err := LoadSync(syncFlags(t, "--containerd-certs-dir", dir))
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), why) {
			t.Errorf("--containerd-certs-dir %s: %v, want a usage error saying %q", dir, err, why)
		}
	}
}

// TestKubectlFlags: the commands that talk to the API server take kubectl's
// --kubeconfig, --context and -n/--namespace; status's namespace is
// nodecreds' (its default, never the context's), check's is the
// ServiceAccount's for --service-account NAME, and each goes only where it
// is used.
func TestKubectlFlags(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	tests := []struct {
		name  string
		cmd   string
		args  []string
		want  func(any) bool
		usage string
	}{
		{name: "status defaults", cmd: "status", want: func(c any) bool {
			s := c.(Status)
			return s.Namespace == DefaultNamespace && s.Context == "" && s.Kubeconfig == ""
		}},
		{name: "status -n --context --kubeconfig", cmd: "status", args: []string{"-n", "ops", "--context", "prod", "--kubeconfig", "/k"}, want: func(c any) bool {
			s := c.(Status)
			return s.Namespace == "ops" && s.Context == "prod" && s.Kubeconfig == "/k"
		}},
		{name: "sync -n --context", cmd: "sync", args: []string{"-n", "ops", "--context", "prod", "--kubeconfig", "/k"}, want: func(c any) bool {
			s := c.(Sync)
			return s.Namespace == "ops" && s.Context == "prod" && s.Kubeconfig == "/k"
		}},
		{name: "check NAME with -n", cmd: "check", args: []string{"--service-account", "puller", "-n", "team-a", "--image", "r.test/a", "--context", "prod"}, want: func(c any) bool {
			s := c.(Check)
			return s.SANamespace == "team-a" && s.SAName == "puller" && s.Context == "prod"
		}},
		{name: "check NS/NAME with the same -n", cmd: "check", args: []string{"--service-account", "team-a/puller", "--namespace", "team-a", "--image", "r.test/a"}, want: func(c any) bool {
			s := c.(Check)
			return s.SANamespace == "team-a" && s.SAName == "puller"
		}},
		{name: "check NS/NAME with another -n", cmd: "check", args: []string{"--service-account", "team-a/puller", "-n", "team-b", "--image", "r.test/a"}, usage: "name different namespaces"},
		{name: "check NAME without -n", cmd: "check", args: []string{"--service-account", "puller", "--image", "r.test/a"}, usage: "or NAME with --namespace"},
		{name: "check -n without --service-account", cmd: "check", args: []string{"-n", "team-a", "--image", "r.test/a"}, usage: "--namespace goes with --service-account"},
		{name: "check --context without --service-account", cmd: "check", args: []string{"--context", "prod", "--image", "r.test/a"}, usage: "--context goes with --service-account"},
		{name: "status empty -n", cmd: "status", args: []string{"-n", ""}, usage: "--namespace is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet(tt.cmd, pflag.ContinueOnError)
			var load func() (any, error)
			switch tt.cmd {
			case "status":
				StatusFlags(fs)
				load = func() (any, error) { return LoadStatus(fs) }
			case "sync":
				SyncFlags(fs)
				load = func() (any, error) { return LoadSync(fs) }
			case "check":
				CheckFlags(fs)
				load = func() (any, error) { return LoadCheck(fs) }
			}
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			c, err := load()
			if tt.usage != "" {
				if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.usage) {
					t.Errorf("%s %v: error %v, want a usage error mentioning %q", tt.cmd, tt.args, err, tt.usage)
				}
				return
			}
			if err != nil || !tt.want(c) {
				t.Errorf("%s %v: %+v, %v", tt.cmd, tt.args, c, err)
			}
		})
	}
}

// TestCheckNamespaceFromTheEnvironment: NODECREDS_NAMESPACE (the agent's,
// in a node's environment) names the ServiceAccount's namespace when
// given, but does not fail a check of the node's files.
func TestCheckNamespaceFromTheEnvironment(t *testing.T) {
	t.Setenv("NODECREDS_NAMESPACE", "team-a")
	for _, args := range [][]string{{"--image", "r.test/a"}, {"--service-account", "puller", "--image", "r.test/a"}} {
		fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
		CheckFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		c, err := LoadCheck(fs)
		if err != nil || (c.ServiceAccount != "" && c.SANamespace != "team-a") {
			t.Errorf("check %v: %+v, %v", args, c, err)
		}
	}
}
