// Package config turns flags, NODECREDS_* environment variables and a YAML
// --config file into validated settings. It is the only package that knows
// about viper. Precedence: flag, then environment, then file, then default.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ErrUsage marks errors in what the user asked for; main exits 2 on them.
var ErrUsage = errors.New("usage")

// UsageError wraps err so that errors.Is(err, ErrUsage) holds.
func UsageError(err error) error { return usageError{err} }

type usageError struct{ err error }

func (u usageError) Error() string         { return u.err.Error() }
func (u usageError) Unwrap() []error       { return []error{ErrUsage, u.err} }
func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// Defaults shared by the commands.
const (
	DefaultNamespace   = "nodecreds"
	DefaultSecret      = "registry-credentials"
	DefaultStateDir    = "/var/lib/nodecreds"
	DefaultKubeletRoot = "/var/lib/kubelet"
	DefaultMetricsAddr = ":9102"
	// DefaultContainerdConfig is where containerd reads its configuration.
	DefaultContainerdConfig = "/etc/containerd/config.toml"
	// DefaultExpiryWarnShare and DefaultExpiryWarnFloor: warn when less than
	// 10 % of the credentials' lifetime, or 15 minutes, is left (the
	// larger): 72 min before a 12 h ECR token expires, 15 min before a 1 h
	// GAR token does.
	DefaultExpiryWarnShare = 0.1
	DefaultExpiryWarnFloor = 15 * time.Minute
)

// DefaultTargets returns the kubelet's file and root's docker CLI file (a
// new slice each time: nobody can change the defaults by accident).
func DefaultTargets() []string {
	return []string{"/var/lib/kubelet/config.json", "/root/.docker/config.json"}
}

// Log is the logging part every command shares.
type Log struct {
	Format string `mapstructure:"log-format"`
	Level  string `mapstructure:"log-level"`
}

// Sync is the agent's configuration.
type Sync struct {
	Config      string        `mapstructure:"config"`
	Source      string        `mapstructure:"source"`
	Namespace   string        `mapstructure:"namespace"`
	Secrets     []string      `mapstructure:"secret"`
	Selector    string        `mapstructure:"selector"`
	SecretDirs  []string      `mapstructure:"secret-dir"`
	HostRoot    string        `mapstructure:"host-root"`
	Targets     []string      `mapstructure:"target"`
	StateDir    string        `mapstructure:"state-dir"`
	NodeName    string        `mapstructure:"node-name"`
	Kubeconfig  string        `mapstructure:"kubeconfig"`
	Context     string        `mapstructure:"context"`
	Once        bool          `mapstructure:"once"`
	Prune       bool          `mapstructure:"prune"`
	Resync      time.Duration `mapstructure:"resync"`
	MetricsAddr string        `mapstructure:"metrics-addr"`
	// InstallProvider is a node folder to keep the credential-provider
	// plugin binary in; empty means the plugin is not installed.
	InstallProvider string `mapstructure:"install-credential-provider"`
	// ContainerdCertsDir is containerd's config_path folder (a node path)
	// whose hosts.toml files get the Authorization header of the Secrets
	// annotated nodecreds.io/runtime-auth; empty: off.
	ContainerdCertsDir string `mapstructure:"containerd-certs-dir"`
	// ContainerdConfig is containerd's main configuration file (a node
	// path), read (never written) with its imports to tell when containerd
	// will not use the headers; only with ContainerdCertsDir.
	ContainerdConfig string `mapstructure:"containerd-config"`
	// Pool is the node pool this agent serves ("" for the default
	// DaemonSet); it names the agent to another one met on the same node.
	Pool string `mapstructure:"pool"`
	// Verify is "on" (log in with changed credentials before they replace
	// the node's) or "off"; VerifySpread the longest a login waits, at
	// random, so a fleet's logins spread; VerifyRetry the first wait
	// before a rejected credential is tried again (doubling to 5 min).
	Verify       string        `mapstructure:"verify"`
	VerifySpread time.Duration `mapstructure:"verify-spread"`
	VerifyRetry  time.Duration `mapstructure:"verify-retry"`
	// ExpiryWarnShare and ExpiryWarnMin: credentials whose Secret carries
	// nodecreds.io/expires-at count as expiring when less than
	// max(share × their lifetime, min) is left.
	ExpiryWarnShare float64       `mapstructure:"expiry-warn-share"`
	ExpiryWarnMin   time.Duration `mapstructure:"expiry-warn-min"`
	// PodName names the agent's Pod (from $POD_NAME, else the host name,
	// which is the Pod's name in a Pod).
	PodName string `mapstructure:"-"`
	Log     `mapstructure:",squash"`
}

// Values of --verify.
const (
	VerifyOn  = "on"
	VerifyOff = "off"
)

// Source kinds.
const (
	SourceSecret = "secret"
	SourceDir    = "dir"
)

// SyncFlags registers the sync command's flags.
func SyncFlags(fs *pflag.FlagSet) {
	configFlag(fs)
	fs.String("source", SourceSecret, "where credentials come from: secret (the API) or dir (mounted Secret folders)")
	fs.StringP("namespace", "n", "", "namespace of the source Secrets (default $POD_NAMESPACE, else "+DefaultNamespace+"; never the kubeconfig context's)")
	secretFlags(fs)
	fs.StringSlice("secret-dir", nil, "folders where Secrets are mounted, in precedence order (with --source dir)")
	hostRootFlag(fs)
	fs.StringSlice("target", DefaultTargets(), "node files to keep in sync")
	stateDirFlag(fs)
	fs.String("node-name", "", "this node's name (default $NODE_NAME)")
	fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster)")
	contextFlag(fs)
	fs.Bool("once", false, "apply once and exit: 0 when every target is in sync, 1 on any error (credentials a registry rejected or that expired included)")
	fs.Bool("prune", true, "remove entries that left the sources")
	fs.Duration("resync", 5*time.Minute, "period of the full re-check")
	fs.String("metrics-addr", DefaultMetricsAddr, "address for /metrics, /healthz and /readyz; 0 disables")
	fs.String("install-credential-provider", "", "node folder to install the kubelet credential-provider plugin into (as "+ProviderBinary+", with the link "+ServiceAccountProviderBinary+" to it for the service-account-token mode); empty: not installed")
	fs.String("containerd-certs-dir", "", "containerd's hosts folder (its config_path, such as /etc/containerd/certs.d): the registries of Secrets annotated nodecreds.io/runtime-auth=true (with --source dir: of every folder) get an Authorization header in its hosts.toml files; empty: off")
	fs.String("containerd-config", DefaultContainerdConfig, "containerd's configuration file, read (with its imports) to say when containerd will not use the hosts.toml headers; only with --containerd-certs-dir")
	fs.String("pool", "", "the node pool this agent serves (the chart sets it per DaemonSet); named when another agent meets this one on a node")
	fs.String("verify", VerifyOn, "on: log in to a registry with changed credentials before they replace the node's, keeping the old ones when it rejects them (401/403); off: apply at once (a Secret opts out with nodecreds.io/verify: \"off\")")
	fs.Duration("verify-spread", time.Second, "the longest a login waits, at random, so that a fleet's logins after a rotation spread out")
	fs.Duration("verify-retry", 15*time.Second, "the wait before rejected credentials are tried again, doubling up to 5m")
	fs.Float64("expiry-warn-share", DefaultExpiryWarnShare, "for Secrets annotated nodecreds.io/expires-at: the condition says CredentialsExpiring when less than this share of the credentials' lifetime (from when the agent first saw that expiry) is left, or --expiry-warn-min, whichever is longer")
	fs.Duration("expiry-warn-min", DefaultExpiryWarnFloor, "for Secrets annotated nodecreds.io/expires-at: the condition says CredentialsExpiring at least this long before the expiry")
	LogFlags(fs)
}

// LogFlags registers the logging flags.
func LogFlags(fs *pflag.FlagSet) {
	fs.String("log-format", "json", "log format: json or text")
	fs.String("log-level", "info", "log level: debug, info, warn or error")
}

// LoadSync reads the sync settings and validates them.
func LoadSync(fs *pflag.FlagSet) (Sync, error) {
	var c Sync
	if err := load(fs, &c); err != nil {
		return c, err
	}
	if c.Namespace == "" {
		c.Namespace = os.Getenv("POD_NAMESPACE")
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.PodName = os.Getenv("POD_NAME"); c.PodName == "" {
		c.PodName, _ = os.Hostname()
	}
	absRoot(&c.HostRoot)
	for i := range c.SecretDirs {
		absRoot(&c.SecretDirs[i])
	}
	return c, c.Validate()
}

// Validate checks the settings as a whole.
func (c Sync) Validate() error {
	var errs []error
	switch c.Source {
	case SourceSecret:
		if c.Selector == "" && len(c.Secrets) == 0 {
			errs = append(errs, usagef("--source secret needs --secret or --selector"))
		}
		if len(c.SecretDirs) > 0 {
			errs = append(errs, usagef("--secret-dir goes with --source dir"))
		}
		for _, s := range c.Secrets {
			if s == "" || strings.ContainsAny(s, "/ ") {
				errs = append(errs, usagef("--secret %q is not a Secret name", s))
			}
		}
	case SourceDir:
		if len(c.SecretDirs) == 0 {
			errs = append(errs, usagef("--source dir needs --secret-dir"))
		}
		for _, d := range c.SecretDirs {
			if d == "" {
				errs = append(errs, usagef("--secret-dir has an empty folder name"))
			}
		}
	default:
		errs = append(errs, usagef("--source %q: must be %s or %s", c.Source, SourceSecret, SourceDir))
	}
	errs = append(errs, validateRoot(c.HostRoot), validateNodePaths("--target", c.Targets), validateNodePaths("--state-dir", []string{c.StateDir}), c.Log.Validate())
	for _, t := range c.Targets {
		if filepath.IsAbs(t) {
			errs = append(errs, refuseSystemFolder("--target", t, filepath.Dir(filepath.Clean(t))))
		}
	}
	if filepath.IsAbs(c.StateDir) {
		errs = append(errs, refuseSystemFolder("--state-dir", c.StateDir, filepath.Clean(c.StateDir)))
	}
	if c.Resync < time.Second {
		errs = append(errs, usagef("--resync %s: must be at least 1s", c.Resync))
	}
	if c.MetricsAddr == "" {
		errs = append(errs, usagef("--metrics-addr is empty; use 0 to disable"))
	}
	if c.InstallProvider != "" {
		errs = append(errs, validateNodePaths("--install-credential-provider", []string{c.InstallProvider}))
	}
	if c.ContainerdCertsDir != "" {
		errs = append(errs, validateCertsDir(c.ContainerdCertsDir), validateNodePaths("--containerd-config", []string{c.ContainerdConfig}))
	}
	errs = append(errs, c.validateRotation()...)
	if c.Pool != "" && !poolName.MatchString(c.Pool) {
		errs = append(errs, usagef("--pool %q: must be a DNS label (lower-case letters, digits, '-'; at most 63)", c.Pool))
	}
	return errors.Join(errs...)
}

// validateRotation checks the flags of verification and expiry.
func (c Sync) validateRotation() []error {
	var errs []error
	if c.Verify != VerifyOn && c.Verify != VerifyOff {
		errs = append(errs, usagef("--verify %q: must be %s or %s", c.Verify, VerifyOn, VerifyOff))
	}
	if c.VerifySpread < 0 || c.VerifySpread > 10*time.Minute {
		errs = append(errs, usagef("--verify-spread %s: must be between 0 and 10m", c.VerifySpread))
	}
	if c.VerifyRetry < time.Second || c.VerifyRetry > 5*time.Minute {
		errs = append(errs, usagef("--verify-retry %s: must be between 1s and 5m", c.VerifyRetry))
	}
	if c.ExpiryWarnShare < 0 || c.ExpiryWarnShare >= 1 {
		errs = append(errs, usagef("--expiry-warn-share %g: must be at least 0 and less than 1", c.ExpiryWarnShare))
	}
	if c.ExpiryWarnMin < 0 {
		errs = append(errs, usagef("--expiry-warn-min %s: must not be negative", c.ExpiryWarnMin))
	}
	return errs
}

// validateCertsDir checks --containerd-certs-dir: an absolute node path
// without "..", and not a system folder. The folder itself is written in
// (a folder per registry), so it is checked, not its parent:
// /etc/containerd/certs.d passes the system-folder rule (folders under /etc
// are fine unless named there), /etc or /etc/containerd/.. do not.
func validateCertsDir(dir string) error {
	if err := validateNodePaths("--containerd-certs-dir", []string{dir}); err != nil {
		return err
	}
	if slices.Contains(strings.Split(dir, "/"), "..") {
		return usagef("--containerd-certs-dir %q: must not hold \"..\"", dir)
	}
	return refuseSystemFolder("--containerd-certs-dir", dir, filepath.Clean(dir))
}

// poolName is a DNS label, as the chart's pool names are (they name
// Kubernetes objects).
var poolName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// absRoot makes --host-root absolute so logs and errors name real paths.
func absRoot(root *string) {
	if *root != "" {
		if abs, err := filepath.Abs(*root); err == nil {
			*root = abs
		}
	}
}

func validateRoot(root string) error {
	if root == "" {
		return usagef("--host-root is empty")
	}
	fi, err := os.Stat(root)
	if err != nil {
		return usagef("--host-root %s: %v", root, err)
	}
	if !fi.IsDir() {
		return usagef("--host-root %s is not a folder", root)
	}
	return nil
}

func validateNodePaths(flag string, paths []string) error {
	if len(paths) == 0 {
		return usagef("%s: at least one path is needed", flag)
	}
	seen := map[string]bool{}
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			return usagef("%s %q: must be an absolute node path", flag, p)
		}
		if seen[filepath.Clean(p)] {
			return usagef("%s %q: listed twice", flag, p)
		}
		seen[filepath.Clean(p)] = true
	}
	return nil
}

// refuseSystemFolder refuses a node folder the agent would need to write
// in (a target's folder, the state folder) when it is a system folder: the
// DaemonSet mounts such a folder read-write from the host, and write access
// there hands over the node (or shares a folder with every program).
func refuseSystemFolder(flag, path, dir string) error {
	why := systemFolder(dir)
	if why == "" {
		return nil
	}
	return usagef("%s %s: %s is a system folder (%s); the DaemonSet mounts this folder read-write from the host: use a folder of nodecreds' own, such as /var/lib/kubelet, /root/.docker or /etc/containers", flag, path, dir, why)
}

// systemFolder says why dir (clean, absolute) is a folder whose write
// access hands over the node, or "" when it is not one. Folders under
// /var/lib, /etc, /run, /root, /home and /opt are fine unless named here:
// /var/lib/kubelet, /root/.docker and /etc/containers hold the files
// nodecreds is for.
func systemFolder(dir string) string {
	top, _, _ := strings.Cut(strings.TrimPrefix(dir, "/"), "/")
	under := func(roots ...string) bool {
		for _, r := range roots {
			if dir == r || strings.HasPrefix(dir, r+"/") {
				return true
			}
		}
		return false
	}
	switch {
	case dir == "/":
		return "the node's whole file system"
	case strings.HasPrefix(top, "lib") || under("/bin", "/sbin", "/usr"):
		return "programs and libraries the node runs"
	case under("/boot", "/dev", "/proc", "/sys"):
		return "boot files, devices or kernel interfaces"
	case under("/etc/kubernetes/manifests"):
		return "the kubelet runs every Pod put there"
	case under("/etc/systemd", "/etc/init.d", "/etc/cron.d", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly",
		"/etc/cron.monthly", "/var/spool/cron", "/etc/sudoers.d", "/etc/ssh", "/root/.ssh", "/etc/profile.d",
		"/etc/ld.so.conf.d", "/etc/pam.d", "/etc/security", "/etc/modprobe.d", "/etc/modules-load.d", "/etc/sysctl.d", "/etc/udev"):
		return "services, schedules, logins or kernel settings of the node"
	}
	switch dir {
	case "/etc", "/etc/kubernetes", "/var", "/var/lib", "/run", "/var/run", "/root", "/home", "/opt", "/srv", "/mnt", "/media":
		return "it holds the node's own settings, state or homes"
	case "/tmp", "/var/tmp":
		return "every program shares it"
	}
	return ""
}

// Validate checks the log settings.
func (l Log) Validate() error {
	var errs []error
	if l.Format != "json" && l.Format != "text" {
		errs = append(errs, usagef("--log-format %q: must be json or text", l.Format))
	}
	if _, err := logrus.ParseLevel(l.Level); err != nil {
		errs = append(errs, usagef("--log-level %q: must be debug, info, warn or error", l.Level))
	}
	return errors.Join(errs...)
}

// load fills out from fs, NODECREDS_* variables and the --config file.
func load(fs *pflag.FlagSet, out any) error {
	_, err := loadSettings(fs, out)
	return err
}

// loadSettings is load, and it returns the settings so a caller can ask
// which were given (viper's IsSet: a flag's default does not count).
func loadSettings(fs *pflag.FlagSet, out any) (*viper.Viper, error) {
	v := viper.New()
	v.SetEnvPrefix("NODECREDS")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	var bindErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" { // cobra's own
			bindErr = errors.Join(bindErr, v.BindPFlag(f.Name, f))
		}
	})
	if bindErr != nil {
		return nil, fmt.Errorf("binding flags: %w", bindErr)
	}
	if file := v.GetString("config"); file != "" {
		if err := readConfigFile(v, fs, file); err != nil {
			return nil, err
		}
	}
	dc := func(dc *mapstructure.DecoderConfig) {
		dc.ErrorUnused = true
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		)
	}
	if err := v.Unmarshal(out, dc); err != nil {
		return nil, usagef("reading settings: %v", err)
	}
	return v, nil
}

// readConfigFile merges a YAML file into v after refusing keys that are not
// flags, so a typo is an error rather than a silently ignored setting.
func readConfigFile(v *viper.Viper, fs *pflag.FlagSet, file string) error {
	f := viper.New()
	f.SetConfigFile(file)
	f.SetConfigType("yaml")
	if err := f.ReadInConfig(); err != nil {
		return usagef("reading --config %s: %v", file, err)
	}
	var unknown []string
	for _, k := range f.AllKeys() {
		top, _, _ := strings.Cut(k, ".")
		if fs.Lookup(top) == nil || top == "config" {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return usagef("--config %s: unknown settings %s", file, strings.Join(unknown, ", "))
	}
	if err := v.MergeConfigMap(f.AllSettings()); err != nil {
		return usagef("--config %s: %v", file, err)
	}
	return nil
}

// Cleanup is `nodecreds cleanup`'s configuration.
type Cleanup struct {
	Config   string   `mapstructure:"config"`
	HostRoot string   `mapstructure:"host-root"`
	Targets  []string `mapstructure:"target"`
	StateDir string   `mapstructure:"state-dir"`
	Log      `mapstructure:",squash"`
}

// CleanupFlags registers the cleanup command's flags.
func CleanupFlags(fs *pflag.FlagSet) {
	configFlag(fs)
	hostRootFlag(fs)
	fs.StringSlice("target", nil, "node files to clean (default: every file the state records)")
	stateDirFlag(fs)
	LogFlags(fs)
}

// LoadCleanup reads and validates the cleanup settings.
func LoadCleanup(fs *pflag.FlagSet) (Cleanup, error) {
	var c Cleanup
	if err := load(fs, &c); err != nil {
		return c, err
	}
	absRoot(&c.HostRoot)
	errs := []error{validateRoot(c.HostRoot), validateNodePaths("--state-dir", []string{c.StateDir}), c.Log.Validate()}
	if len(c.Targets) > 0 {
		errs = append(errs, validateNodePaths("--target", c.Targets))
	}
	return c, errors.Join(errs...)
}

// Check is `nodecreds check`'s configuration.
type Check struct {
	Config         string        `mapstructure:"config"`
	HostRoot       string        `mapstructure:"host-root"`
	KubeletRootDir string        `mapstructure:"kubelet-root-dir"`
	Images         []string      `mapstructure:"image"`
	Registries     []string      `mapstructure:"registry"`
	Probe          bool          `mapstructure:"probe"`
	Timeout        time.Duration `mapstructure:"timeout"`
	Output         string        `mapstructure:"output"`
	// Runtime: "containerd" also answers for containerd's own pulls.
	Runtime            string `mapstructure:"runtime"`
	RuntimeVersion     string `mapstructure:"runtime-version"`
	ContainerdCertsDir string `mapstructure:"containerd-certs-dir"`
	ContainerdConfig   string `mapstructure:"containerd-config"`
	StateDir           string `mapstructure:"state-dir"`
	Sandbox            bool   `mapstructure:"sandbox"`
	// ServiceAccount (NS/NAME) asks what the plugin's service-account mode
	// answers for that ServiceAccount's Pods, read through the API with
	// Kubeconfig (the caller's); the node's files are then not read.
	ServiceAccount string `mapstructure:"service-account"`
	Kubeconfig     string `mapstructure:"kubeconfig"`
	Context        string `mapstructure:"context"`
	// Namespace is the ServiceAccount's when --service-account names it
	// alone; it has no default (a tenant's ServiceAccount is rarely in
	// nodecreds' namespace, and the context's is never used).
	Namespace string `mapstructure:"namespace"`
	// SANamespace and SAName are ServiceAccount split.
	SANamespace string `mapstructure:"-"`
	SAName      string `mapstructure:"-"`
	Log         `mapstructure:",squash"`
}

// DefaultContainerdCertsDir is check's default for containerd's hosts
// folder (sync's runtime target stays off unless given one).
const DefaultContainerdCertsDir = "/etc/containerd/certs.d"

// CheckFlags registers the check command's flags.
func CheckFlags(fs *pflag.FlagSet) {
	configFlag(fs)
	hostRootFlag(fs)
	fs.String("kubelet-root-dir", DefaultKubeletRoot, "the kubelet's --root-dir, the first folder it looks in")
	fs.StringSlice("image", nil, "images to check (as in a Pod spec)")
	fs.StringSlice("registry", nil, "registries to check (host[:port])")
	fs.Bool("probe", false, "log in to each registry's /v2/ with the credentials found")
	fs.Duration("timeout", 10*time.Second, "time limit of each --probe login, or with --service-account of all its API requests (alias --probe-timeout)")
	fs.String("runtime", "", "also answer for the container runtime's own pulls: containerd (the hosts.toml header each host it tries gets)")
	fs.String("runtime-version", "", "with --runtime: the Node's status.nodeInfo.containerRuntimeVersion (containerd://2.1.4, or 2.1.4); empty: the checks that need it are not made")
	fs.String("containerd-certs-dir", DefaultContainerdCertsDir, "with --runtime: the folder nodecreds writes hosts.toml into (sync --containerd-certs-dir)")
	fs.String("containerd-config", DefaultContainerdConfig, "with --runtime: containerd's configuration file (its imports are followed)")
	fs.String("state-dir", DefaultStateDir, "with --runtime: nodecreds' state folder, whose records tell the headers it wrote")
	fs.Bool("sandbox", false, "with --runtime: also check the sandbox (pause) image containerd's configuration names, or its default")
	fs.String("service-account", "", "NAMESPACE/NAME (or NAME with --namespace): say what the credential-provider's service-account mode (nodecreds-sa) answers for each --image pulled by that ServiceAccount's Pods, reading the ServiceAccount and its nodecreds.io/pull-secret Secrets with --kubeconfig (the caller's credentials, never a token) and asking the API server whether the ServiceAccount itself may get each Secret; the node's files are not read, so only --image, --kubeconfig, --context, --namespace, --timeout, -o and the log flags go with it; exit 0 only when the plugin answers for every image (a ServiceAccount without the annotation: 1, the kubelet skips the plugin)")
	fs.String("kubeconfig", "", "with --service-account: kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)")
	contextFlag(fs)
	fs.StringP("namespace", "n", "", "with --service-account NAME: the ServiceAccount's namespace (no default: never the kubeconfig context's; NAMESPACE/NAME needs none)")
	outputFlag(fs)
	LogFlags(fs)
	aliases(fs, map[string]string{"probe-timeout": "timeout"})
}

// aliases makes each alias flag name parse as its canonical flag, for names
// that differ between commands (check's --timeout is per probe, status's
// is the whole wait; credential-provider's --file is one of sync's
// --target files).
func aliases(fs *pflag.FlagSet, names map[string]string) {
	fs.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if canonical, ok := names[name]; ok {
			name = canonical
		}
		return pflag.NormalizedName(name)
	})
}

// LoadCheck reads and validates the check settings.
func LoadCheck(fs *pflag.FlagSet) (Check, error) {
	var c Check
	if err := load(fs, &c); err != nil {
		return c, err
	}
	absRoot(&c.HostRoot)
	errs := []error{validateRoot(c.HostRoot), validateNodePaths("--kubelet-root-dir", []string{c.KubeletRootDir}), c.Log.Validate()}
	switch {
	case c.ServiceAccount != "":
		errs = append(errs, c.splitServiceAccount())
	case c.Kubeconfig != "":
		errs = append(errs, usagef("--kubeconfig goes with --service-account (check reads the node's files otherwise)"))
	case c.Context != "":
		errs = append(errs, usagef("--context goes with --service-account (check reads the node's files otherwise)"))
	case fs.Changed("namespace"):
		// Only the flag: NODECREDS_NAMESPACE, which a node's environment
		// may hold for the agent, must not fail a node's check.
		errs = append(errs, usagef("--namespace goes with --service-account (check reads the node's files otherwise)"))
	case len(c.Images) == 0 && len(c.Registries) == 0 && !(c.Sandbox && c.Runtime != ""):
		errs = append(errs, usagef("give at least one --image or --registry (or --runtime containerd --sandbox)"))
	}
	errs = append(errs, validateCheckRuntime(c))
	errs = append(errs, validateOutput(c.Output))
	if c.Timeout <= 0 {
		errs = append(errs, usagef("--timeout %s: must be positive", c.Timeout))
	}
	return c, errors.Join(errs...)
}

// splitServiceAccount checks --service-account NS/NAME and what goes with
// it. The plugin's answer comes from the API, not from the node: a flag
// about the node's files, a registry or containerd would be silently
// ignored, so it is refused instead.
func (c *Check) splitServiceAccount() error {
	var errs []error
	ns, name, ok := strings.Cut(c.ServiceAccount, "/")
	if !ok && c.Namespace != "" {
		ns, name, ok = c.Namespace, c.ServiceAccount, true
	}
	switch {
	case !ok || strings.Contains(name, "/"):
		errs = append(errs, usagef("--service-account %q: must be NAMESPACE/NAME, or NAME with --namespace", c.ServiceAccount))
	case c.Namespace != "" && c.Namespace != ns:
		errs = append(errs, usagef("--service-account %q and --namespace %q name different namespaces", c.ServiceAccount, c.Namespace))
	case len(validation.IsDNS1123Label(ns)) > 0:
		errs = append(errs, usagef("--service-account %q: %q is not a namespace name", c.ServiceAccount, ns))
	case len(validation.IsDNS1123Subdomain(name)) > 0:
		errs = append(errs, usagef("--service-account %q: %q is not a ServiceAccount name", c.ServiceAccount, name))
	default:
		c.SANamespace, c.SAName = ns, name
	}
	if len(c.Images) == 0 {
		errs = append(errs, usagef("--service-account needs --image: the plugin answers for images"))
	}
	nodeOnly := []struct {
		flag string
		set  bool
	}{
		{"--host-root", c.HostRoot != "/"},
		{"--kubelet-root-dir", c.KubeletRootDir != DefaultKubeletRoot},
		{"--registry", len(c.Registries) > 0},
		{"--probe", c.Probe},
		{"--runtime", c.Runtime != ""},
		{"--runtime-version", c.RuntimeVersion != ""},
		{"--containerd-certs-dir", c.ContainerdCertsDir != DefaultContainerdCertsDir},
		{"--containerd-config", c.ContainerdConfig != DefaultContainerdConfig},
		{"--state-dir", c.StateDir != DefaultStateDir},
		{"--sandbox", c.Sandbox},
	}
	for _, f := range nodeOnly {
		if f.set {
			errs = append(errs, usagef("%s does not go with --service-account: the plugin's answer is read from the API, not from the node (check the node-wide answer without --service-account)", f.flag))
		}
	}
	return errors.Join(errs...)
}

// validateCheckRuntime checks check's runtime flags.
func validateCheckRuntime(c Check) error {
	switch c.Runtime {
	case "":
		if c.Sandbox {
			return usagef("--sandbox needs --runtime containerd")
		}
		return nil
	case "containerd":
	default:
		return usagef("--runtime %q: only containerd is checked (CRI-O reads the kubelet's config.json through global_auth_file: check without --runtime)", c.Runtime)
	}
	return errors.Join(
		validateNodePaths("--containerd-certs-dir", []string{c.ContainerdCertsDir}),
		validateNodePaths("--containerd-config", []string{c.ContainerdConfig}),
		validateNodePaths("--state-dir", []string{c.StateDir}))
}

// Status is `nodecreds status`'s configuration.
type Status struct {
	Config     string        `mapstructure:"config"`
	Kubeconfig string        `mapstructure:"kubeconfig"`
	Context    string        `mapstructure:"context"`
	Namespace  string        `mapstructure:"namespace"`
	Secrets    []string      `mapstructure:"secret"`
	Selector   string        `mapstructure:"selector"`
	Pool       string        `mapstructure:"pool"`
	Wait       bool          `mapstructure:"wait"`
	Timeout    time.Duration `mapstructure:"timeout"`
	Output     string        `mapstructure:"output"`
	Log        `mapstructure:",squash"`
}

// StatusFlags registers the status command's flags.
func StatusFlags(fs *pflag.FlagSet) {
	configFlag(fs)
	fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)")
	contextFlag(fs)
	fs.StringP("namespace", "n", DefaultNamespace, "nodecreds' namespace: of its DaemonSet and the source Secrets (never the kubeconfig context's)")
	secretFlags(fs)
	fs.String("pool", "", "count the nodes of this pool of the chart (its DaemonSet's); without it, those of the default DaemonSet")
	fs.Bool("wait", false, "wait until every node has applied the current revision (exit 1 at --timeout)")
	fs.Duration("timeout", 5*time.Minute, "how long --wait waits")
	outputFlag(fs)
	LogFlags(fs)
}

// LoadStatus reads and validates the status settings.
func LoadStatus(fs *pflag.FlagSet) (Status, error) {
	var c Status
	if err := load(fs, &c); err != nil {
		return c, err
	}
	errs := []error{c.Log.Validate()}
	if c.Selector == "" && len(c.Secrets) == 0 {
		errs = append(errs, usagef("give --secret or --selector"))
	}
	errs = append(errs, validateOutput(c.Output))
	if c.Timeout <= 0 {
		errs = append(errs, usagef("--timeout %s: must be positive", c.Timeout))
	}
	if c.Namespace == "" {
		errs = append(errs, usagef("--namespace is empty"))
	}
	if c.Pool != "" && !poolName.MatchString(c.Pool) {
		errs = append(errs, usagef("--pool %q: must be a DNS label (lower-case letters, digits, '-'; at most 63)", c.Pool))
	}
	return c, errors.Join(errs...)
}

// ProviderBinary is the plugin's file name in the kubelet's
// --image-credential-provider-bin-dir, and so the provider's name in the
// CredentialProviderConfig.
const ProviderBinary = "nodecreds"

// DefaultProviderCache is how long the kubelet may keep a plugin answer.
// Short on purpose: a pull that gets a stale answer fails and costs the Pod
// an image-pull back-off (10 s and more), so any cache longer than the time
// from a rotation to the next pull shows up in full. One second still
// collapses a burst of pulls from one registry into one run (about 14 ms).
const DefaultProviderCache = time.Second

// ServiceAccountProviderBinary is the name of the link to the plugin the
// agent installs beside it, so the kubelet can have a second provider
// entry (names are unique) for the service-account-token mode.
const ServiceAccountProviderBinary = "nodecreds-sa"

// DefaultServiceAccountCache is the answer's cache in the
// service-account-token mode. The kubelet keys it by ServiceAccount
// (cacheType ServiceAccount), a key that does not change when the tenant
// rotates the Secret, so it bounds how long a rotation takes to reach new
// pulls; each run costs the API server one GET per Secret read, which a
// few seconds of cache keep from growing with the number of pulls.
const DefaultServiceAccountCache = 10 * time.Second

// DefaultAPITimeout bounds a whole service-account-mode run: well inside
// the kubelet's one-minute exec timeout, so a slow API server fails the
// answer (and the kubelet goes on to its other sources) rather than the
// pull. MaxAPITimeout keeps it there.
const (
	DefaultAPITimeout = 10 * time.Second
	MaxAPITimeout     = 50 * time.Second
)

// Provider is `nodecreds credential-provider`'s configuration. The kubelet
// runs it with the arguments of its CredentialProviderConfig and its own
// environment, so NODECREDS_* variables apply as for every command.
type Provider struct {
	Config        string        `mapstructure:"config"`
	HostRoot      string        `mapstructure:"host-root"`
	File          string        `mapstructure:"file"`
	CacheDuration time.Duration `mapstructure:"cache-duration"`
	// ServiceAccount selects the service-account-token mode: the answer
	// comes from the Secrets the Pod's ServiceAccount names, read from
	// the API server with the Pod's token, not from File.
	ServiceAccount bool `mapstructure:"service-account"`
	// APIServer and APICAFile say where the API server is and which CA
	// signs its serving certificate (a node path); KubeletKubeconfig is a
	// kubeconfig (a node path) whose current context's cluster gives
	// either when it is not set. Its credentials are never read.
	APIServer         string        `mapstructure:"api-server"`
	APICAFile         string        `mapstructure:"api-ca-file"`
	KubeletKubeconfig string        `mapstructure:"kubelet-kubeconfig"`
	APITimeout        time.Duration `mapstructure:"api-timeout"`
	// StateDir is the node folder of the answer counters the agent
	// exports (a missing folder: not counted).
	StateDir string `mapstructure:"state-dir"`
}

// ProviderFlags registers the credential-provider command's flags.
func ProviderFlags(fs *pflag.FlagSet) {
	configFlag(fs)
	hostRootFlag(fs)
	fs.String("file", DefaultTargets()[0], "the config.json nodecreds keeps in sync, answered from (alias --target); not with --service-account")
	fs.Duration("cache-duration", DefaultProviderCache, "how long the kubelet may cache an answer (0: not at all); "+DefaultServiceAccountCache.String()+" when not set with --service-account")
	fs.Bool("service-account", false, "answer with the Secrets named by the pulling Pod's ServiceAccount (annotation nodecreds.io/pull-secret), read from the API server with the Pod's token (the kubelet's tokenAttributes)")
	fs.String("api-server", "", "with --service-account: the API server's https URL (default: the server of --kubelet-kubeconfig)")
	fs.String("api-ca-file", "", "with --service-account: node path of the CA file the API server's certificate is verified with (default: the CA of --kubelet-kubeconfig)")
	fs.String("kubelet-kubeconfig", "", "with --service-account: node path of the kubelet's kubeconfig (such as kubeadm's /etc/kubernetes/kubelet.conf), whose current cluster gives the API server and its CA; its credentials are never read")
	fs.Duration("api-timeout", DefaultAPITimeout, "with --service-account: the longest a run may take, API requests included (less than "+MaxAPITimeout.String()+", inside the kubelet's 1m exec timeout)")
	fs.String("state-dir", DefaultStateDir, "with --service-account: node folder where the answers are counted, by reason, for the agent's metric nodecreds_workload_answers_total (a missing folder: not counted)")
	aliases(fs, map[string]string{"target": "file"})
}

// LoadProvider reads and validates the credential-provider settings.
func LoadProvider(fs *pflag.FlagSet) (Provider, error) {
	var c Provider
	v, err := loadSettings(fs, &c)
	if err != nil {
		return c, err
	}
	absRoot(&c.HostRoot)
	if c.ServiceAccount && !v.IsSet("cache-duration") {
		c.CacheDuration = DefaultServiceAccountCache
	}
	errs := []error{validateRoot(c.HostRoot), validateNodePaths("--file", []string{c.File})}
	if c.CacheDuration < 0 {
		errs = append(errs, usagef("--cache-duration %s: must not be negative", c.CacheDuration))
	}
	if c.ServiceAccount {
		errs = append(errs, c.validateServiceAccount()...)
	} else {
		// Without the mode these would be ignored, and a provider entry
		// meant for workloads would answer with the node's credentials.
		for _, f := range []string{"api-server", "api-ca-file", "kubelet-kubeconfig"} {
			if v.IsSet(f) {
				errs = append(errs, usagef("--%s: only with --service-account", f))
			}
		}
	}
	return c, errors.Join(errs...)
}

// validateServiceAccount checks the service-account-token mode's flags:
// an https API server and a CA to verify it, each given or taken from the
// kubelet's kubeconfig (read at run time), and a timeout inside the
// kubelet's.
func (c Provider) validateServiceAccount() []error {
	var errs []error
	if c.APIServer == "" && c.KubeletKubeconfig == "" {
		errs = append(errs, usagef("--service-account needs the API server: --api-server or --kubelet-kubeconfig"))
	}
	if c.APICAFile == "" && c.KubeletKubeconfig == "" {
		errs = append(errs, usagef("--service-account needs the API server's CA: --api-ca-file or --kubelet-kubeconfig"))
	}
	if c.APIServer != "" {
		if err := ValidateAPIServer(c.APIServer); err != nil {
			errs = append(errs, usagef("--api-server: %v", err))
		}
	}
	if c.APICAFile != "" {
		errs = append(errs, validateNodePaths("--api-ca-file", []string{c.APICAFile}))
	}
	if c.KubeletKubeconfig != "" {
		errs = append(errs, validateNodePaths("--kubelet-kubeconfig", []string{c.KubeletKubeconfig}))
	}
	errs = append(errs, validateNodePaths("--state-dir", []string{c.StateDir}))
	if c.APITimeout <= 0 || c.APITimeout >= MaxAPITimeout {
		errs = append(errs, usagef("--api-timeout %s: must be more than 0 and less than %s (the kubelet kills a plugin after 1m)", c.APITimeout, MaxAPITimeout))
	}
	return errs
}

// ValidateAPIServer accepts an https URL of a host, nothing else: the Pod's
// token goes to it, so it is never sent in clear. The provider checks the
// server a kubeconfig names with it too.
func ValidateAPIServer(server string) error {
	u, err := url.Parse(server)
	switch {
	case err != nil:
		return errors.New("not a URL")
	case u.User != nil:
		// Not echoed: the user part may hold a password.
		return errors.New("must be https://HOST[:PORT][/PATH], without a user")
	case u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("%q: must be an https:// URL (the Pod's token is sent to it)", server)
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q: must be https://HOST[:PORT][/PATH], without query or fragment", server)
	}
	return nil
}

// The flags several commands share, each registered by one helper so their
// names, defaults and help stay the same everywhere.

func configFlag(fs *pflag.FlagSet) {
	fs.String("config", "", "YAML file with any of these settings (keys are the flag names)")
}

// contextFlag is kubectl's --context, for the commands that talk to the
// API server (their --kubeconfig and --namespace are kubectl's names too).
func contextFlag(fs *pflag.FlagSet) {
	fs.String("context", "", "the kubeconfig context to use (default: its current context)")
}

func hostRootFlag(fs *pflag.FlagSet) {
	fs.String("host-root", "/", "where the node's file system is mounted; every node path is taken under it")
}

func stateDirFlag(fs *pflag.FlagSet) {
	fs.String("state-dir", DefaultStateDir, "node folder for nodecreds' ownership state")
}

func outputFlag(fs *pflag.FlagSet) {
	fs.StringP("output", "o", "table", "output format: table or json")
}

func secretFlags(fs *pflag.FlagSet) {
	fs.StringSlice("secret", []string{DefaultSecret}, "source Secret names, in precedence order (as given to the agents)")
	fs.String("selector", "", "label selector for source Secrets, instead of --secret (precedence: ascending name)")
}

func validateOutput(o string) error {
	if o != "table" && o != "json" {
		return usagef("-o %q: must be table or json", o)
	}
	return nil
}
