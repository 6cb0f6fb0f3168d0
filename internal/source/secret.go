package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/kube"
)

// Secrets reads source Secrets through the API with one watch per name,
// each scoped by fieldSelector=metadata.name=<name> so RBAC can pin the
// Role to resourceNames — or one watch for a label selector. The caches
// hold the last state they saw while the API server is away and relist
// when it is back, so an outage changes nothing on the node.
type Secrets struct {
	namespace string
	names     []string
	selector  string
	log       *logrus.Entry

	// node is the agent's own Node, whose labels decide which Secrets with
	// a node selector apply; nil without a node name.
	node    *Node
	watches []*watched
	changed chan struct{}
	ready   chan struct{}

	// parsed holds the snapshot of each Secret (by namespace/name) for the
	// version it was made from: a Secret is decoded once per version, not
	// on every sync, and the agent's last good snapshot is that same one
	// rather than a second copy of thousands of entries.
	mu     sync.Mutex
	parsed map[string]Snapshot
}

// NewSecrets returns a source over the named Secrets (in precedence order)
// or, when selector is set, over the Secrets it selects; of those, only the
// ones whose node selector matches the Node nodeName (every one without a
// node selector) are handed out.
func NewSecrets(client kube.Interface, namespace string, names []string, selector, nodeName string, log *logrus.Entry) *Secrets {
	if selector != "" {
		names = nil // the selector decides which Secrets
	}
	s := &Secrets{namespace: namespace, names: names, selector: selector, log: log,
		changed: make(chan struct{}, 1), ready: make(chan struct{}), parsed: map[string]Snapshot{}}
	if nodeName != "" {
		s.node = NewNode(client, nodeName, s.notify)
	}
	newWatch := func(tweak func(*metav1.ListOptions)) *watched {
		secrets := client.Secrets(namespace)
		lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				tweak(&o)
				return secrets.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				tweak(&o)
				return secrets.Watch(ctx, o)
			},
		}, client)
		return newWatched(lw, &corev1.Secret{}, trimSecret, s.notify)
	}
	if selector != "" {
		s.watches = append(s.watches, newWatch(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	} else {
		for _, name := range names {
			fs := fields.OneTermEqualSelector("metadata.name", name).String()
			s.watches = append(s.watches, newWatch(func(o *metav1.ListOptions) { o.FieldSelector = fs }))
		}
	}
	return s
}

// trimSecret keeps only what nodecreds reads: managed fields, annotations
// such as last-applied-configuration, and data keys other than the two
// credential keys (a Secret may carry up to 1 MiB of anything) would add to
// the memory for nothing.
func trimSecret(obj any) any {
	if sec, ok := obj.(*corev1.Secret); ok {
		sec.ManagedFields = nil
		var kept map[string]string
		for _, a := range []string{AnnotationNodeSelector, AnnotationRuntimeAuth, AnnotationVerify, AnnotationExpiresAt} {
			if v, ok := sec.Annotations[a]; ok {
				if kept == nil {
					kept = map[string]string{}
				}
				kept[a] = v
			}
		}
		sec.Annotations = kept
		for k := range sec.Data {
			if k != dockercfg.KeyConfigJSON && k != dockercfg.KeyLegacy {
				delete(sec.Data, k)
			}
		}
	}
	return obj
}

// Changed is signalled (coalesced) when a Secret is added, updated or
// deleted, or the Node's labels change.
func (s *Secrets) Changed() <-chan struct{} { return s.changed }

// Completed is Changed: a watch event is a whole new version of a Secret
// (or of the Node's labels), so the agent syncs at once.
func (s *Secrets) Completed() <-chan struct{} { return s.changed }

// Ready is closed once every watch has its first list.
func (s *Secrets) Ready() <-chan struct{} { return s.ready }

func (s *Secrets) notify() { signal(s.changed) }

// Run runs the watches until ctx ends, and returns once they stopped.
func (s *Secrets) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	syncs := make([]cache.InformerSynced, 0, len(s.watches)+1)
	for _, w := range s.watches {
		wg.Go(func() { w.Run(ctx) })
		syncs = append(syncs, w.HasSynced)
	}
	if s.node != nil {
		wg.Go(func() { s.node.Run(ctx) })
		syncs = append(syncs, s.node.HasSynced)
	}
	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return nil // stopped before the first list
	}
	s.log.WithFields(logrus.Fields{"namespace": s.namespace, "secrets": s.names, "selector": s.selector, "took": time.Since(start).String()}).Info("secret caches synced")
	close(s.ready)
	<-ctx.Done()
	return nil
}

// Snapshots returns the Secrets that apply to this node as the watches
// last saw them, in precedence order.
func (s *Secrets) Snapshots() []Snapshot {
	snaps, _ := Select(s.namespace, s.names, s.selector, cacheLookup{s}) // the caches cannot fail
	s.keepParsed(snaps)
	var node *NodeLabels
	if s.node != nil {
		node = s.node.Labels()
	}
	return ForNode(snaps, node)
}

// snapshot is FromSecret(sec), made once per version of each Secret (an
// object without a resourceVersion, which the API server never hands out,
// every time).
func (s *Secrets) snapshot(sec *corev1.Secret) Snapshot {
	if sec.ResourceVersion == "" {
		return FromSecret(sec)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	name := sec.Namespace + "/" + sec.Name
	if snap, ok := s.parsed[name]; ok && snap.Revision == revision(sec) {
		return snap
	}
	snap := FromSecret(sec)
	s.parsed[name] = snap
	return snap
}

// keepParsed forgets the snapshots of Secrets no longer among snaps.
func (s *Secrets) keepParsed(snaps []Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.parsed) == 0 {
		return
	}
	current := make(map[string]bool, len(snaps))
	for _, snap := range snaps {
		current[snap.Name] = true
	}
	for name := range s.parsed {
		if !current[name] {
			delete(s.parsed, name)
		}
	}
}

// snapshotter is a SecretLookup that keeps each Secret's snapshot (the
// agent's caches); Select asks it rather than decoding again.
type snapshotter interface {
	snapshot(*corev1.Secret) Snapshot
}

// SecretLookup is where Select reads Secrets: the watches' caches in the
// agent, the API in `nodecreds status`.
type SecretLookup interface {
	// Get returns the named Secret, or nil when there is none.
	Get(name string) (*corev1.Secret, error)
	// List returns the Secrets the selector selects.
	List() ([]*corev1.Secret, error)
}

// Select builds the snapshots of the source Secrets in precedence order:
// with a selector, every selected Secret by ascending name; otherwise each
// name in order, a missing one as Missing. The agent and `nodecreds status`
// both use it, so their revisions are computed from the same list.
func Select(namespace string, names []string, selector string, l SecretLookup) ([]Snapshot, error) {
	fromSecret := FromSecret
	if sn, ok := l.(snapshotter); ok {
		fromSecret = sn.snapshot
	}
	if selector != "" {
		secrets, err := l.List()
		if err != nil {
			return nil, err
		}
		sort.Slice(secrets, func(i, j int) bool { return secrets[i].Name < secrets[j].Name })
		out := make([]Snapshot, len(secrets))
		for i, sec := range secrets {
			out[i] = fromSecret(sec)
		}
		return out, nil
	}
	out := make([]Snapshot, len(names))
	for i, name := range names {
		sec, err := l.Get(name)
		switch {
		case err != nil:
			return nil, err
		case sec == nil:
			out[i] = Missing(namespace, name)
		default:
			out[i] = fromSecret(sec)
		}
	}
	return out, nil
}

// cacheLookup reads the watches' caches.
type cacheLookup struct{ s *Secrets }

func (c cacheLookup) snapshot(sec *corev1.Secret) Snapshot { return c.s.snapshot(sec) }

func (c cacheLookup) Get(name string) (*corev1.Secret, error) {
	for i, n := range c.s.names {
		if n != name {
			continue
		}
		obj, ok, _ := c.s.watches[i].store.GetByKey(c.s.namespace + "/" + name)
		if sec, isSecret := obj.(*corev1.Secret); ok && isSecret {
			return sec, nil
		}
	}
	return nil, nil
}

func (c cacheLookup) List() ([]*corev1.Secret, error) {
	objs := c.s.watches[0].store.List()
	out := make([]*corev1.Secret, 0, len(objs))
	for _, o := range objs {
		if sec, ok := o.(*corev1.Secret); ok {
			out = append(out, sec)
		}
	}
	return out, nil
}

// Missing is the snapshot of a Secret that does not exist.
func Missing(namespace, name string) Snapshot {
	return Snapshot{
		Name: namespace + "/" + name,
		Err:  fmt.Errorf("Secret %s/%s: %w", namespace, name, ErrNotFound),
	}
}

// AnnotationRuntimeAuth on a Secret, "true", also puts its registries'
// credentials in containerd's hosts.toml as an Authorization header (with
// sync --containerd-certs-dir): a header is sent with every request to its
// host, so each Secret opts in.
const AnnotationRuntimeAuth = "nodecreds.io/runtime-auth"

// AnnotationVerify on a Secret, "off", applies its changed credentials
// without logging in with them first (sync --verify=on is the default).
const AnnotationVerify = "nodecreds.io/verify"

// FromSecret validates a Secret. The revision names its version (uid and
// resourceVersion), never its data.
func FromSecret(sec *corev1.Secret) Snapshot {
	snap := Snapshot{
		Name:     sec.Namespace + "/" + sec.Name,
		Revision: revision(sec),
	}
	_, snap.Selected = sec.Annotations[AnnotationNodeSelector]
	snap.RuntimeAuth = sec.Annotations[AnnotationRuntimeAuth] == "true"
	snap.NoVerify = sec.Annotations[AnnotationVerify] == "off"
	snap.ExpiresAt, snap.ExpiryErr = parseExpiresAt(snap.Name, sec.Annotations)
	sel, err := parseNodeSelector(snap.Name, sec.Annotations)
	if err != nil {
		// Nobody can tell which nodes it is for: every agent reports it.
		snap.Err = err
		return snap
	}
	snap.NodeSelector = sel
	size := 0
	for _, v := range sec.Data {
		size += len(v)
	}
	if size > dockercfg.MaxSize {
		snap.Err = fmt.Errorf("Secret %s: %w", snap.Name, &dockercfg.ValidationError{Problems: []dockercfg.Problem{{
			Reason: fmt.Sprintf("data is %d bytes, larger than the 1 MiB a Secret may hold", size)}}})
		return snap
	}
	set, clashes, err := FromData(string(sec.Type), sec.Data)
	if err != nil {
		snap.Err = fmt.Errorf("Secret %s: %w", snap.Name, err)
		return snap
	}
	snap.Set, snap.Clashes = set, clashes
	return snap
}

// revision names a Secret's version: its uid and resourceVersion.
func revision(sec *corev1.Secret) string { return string(sec.UID) + "/" + sec.ResourceVersion }

// Revision digests the sources' names and revisions (never their data)
// into the value the agent puts in the nodecreds.io/revision annotation and
// `nodecreds status` compares it with.
func Revision(snaps []Snapshot) string {
	h := sha256.New()
	for _, s := range snaps {
		h.Write([]byte(s.Name))
		h.Write([]byte{0})
		h.Write([]byte(s.Revision))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Versions lists the sources as name@revision, comma-separated, for the
// nodecreds.io/sources annotation: it lets `nodecreds status` name the
// Secret a node lags on, where the revision digest only says that it does.
func Versions(snaps []Snapshot) string {
	parts := make([]string, len(snaps))
	for i, s := range snaps {
		parts[i] = s.Name + "@" + s.Revision
	}
	return strings.Join(parts, ",")
}

// ParseVersions reads what Versions wrote: revision by source name.
func ParseVersions(v string) map[string]string {
	out := map[string]string{}
	for part := range strings.SplitSeq(v, ",") {
		if name, rev, ok := strings.Cut(part, "@"); ok {
			out[name] = rev
		}
	}
	return out
}
