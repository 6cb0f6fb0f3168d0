package source

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/testsupport"

	"github.com/nodecreds/nodecreds/internal/kube/kubetest"
)

var good = []byte(`{"auths":{"r.test":{"auth":"` + testsupport.B64("u:p") + `"}}}`)

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestReadDir(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		wantErr error
		keys    int
	}{
		{"plain file", func(t *testing.T, d string) { write(t, filepath.Join(d, ".dockerconfigjson"), good) }, nil, 1},
		{"legacy key", func(t *testing.T, d string) {
			write(t, filepath.Join(d, ".dockercfg"), []byte(`{"r.test":{"auth":"`+testsupport.B64("u:p")+`"}}`))
		}, nil, 1},
		{"kubelet ..data layout", func(t *testing.T, d string) {
			write(t, filepath.Join(d, "..2026_01_01", ".dockerconfigjson"), good)
			if err := os.Symlink("..2026_01_01", filepath.Join(d, "..data")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("..data/.dockerconfigjson", filepath.Join(d, ".dockerconfigjson")); err != nil {
				t.Fatal(err)
			}
		}, nil, 1},
		{"no credentials key", func(t *testing.T, d string) { write(t, filepath.Join(d, "password"), []byte("x")) }, dockercfg.ErrInvalid, 0},
		{"missing folder", func(t *testing.T, d string) { os.RemoveAll(d) }, ErrNotFound, 0},
		{"oversized", func(t *testing.T, d string) {
			write(t, filepath.Join(d, ".dockerconfigjson"), []byte(`{"auths":{"r.test":{"auth":"`+strings.Repeat("A", dockercfg.MaxSize)+`"}}}`))
		}, dockercfg.ErrInvalid, 0},
		{"invalid", func(t *testing.T, d string) { write(t, filepath.Join(d, ".dockerconfigjson"), []byte("{")) }, dockercfg.ErrInvalid, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "secret")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, dir)
			s := readDir(dir)
			if tt.wantErr != nil {
				if !errors.Is(s.Err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", s.Err, tt.wantErr)
				}
				if !strings.Contains(s.Err.Error(), dir) {
					t.Errorf("error %q does not name the folder", s.Err)
				}
				return
			}
			if s.Err != nil || len(s.Set) != tt.keys {
				t.Fatalf("snapshot = %+v", s)
			}
			if s.Revision == "" {
				t.Errorf("no revision")
			}
		})
	}
}

func TestDirNotifiesOnDataSwap(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secret")
	write(t, filepath.Join(dir, "..a", ".dockerconfigjson"), good)
	if err := os.Symlink("..a", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	d := NewDir([]string{dir}, false, logrus.NewEntry(logrus.New()))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	// The first notification says the folder is watched.
	select {
	case <-d.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("no notification when the watch started")
	}
	// The kubelet's steps before the swap change nothing a sync would read.
	write(t, filepath.Join(dir, "..b", ".dockerconfigjson"), good)
	if err := os.Symlink("..b", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Changed():
		t.Fatal("notified before ..data moved")
	case <-d.Completed():
		t.Fatal("notified before ..data moved")
	case <-time.After(200 * time.Millisecond):
	}
	// The swap is a whole new version: Completed, for a sync at once.
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Completed():
	case <-time.After(5 * time.Second):
		t.Fatal("no notification for the ..data swap")
	}
	// A key file written in place may be half written: Changed, for a sync
	// once the writes settle.
	write(t, filepath.Join(dir, ".dockercfg"), []byte("{"))
	select {
	case <-d.Changed():
	case <-d.Completed():
		t.Fatal("a key file written in place was taken as a whole new version")
	case <-time.After(5 * time.Second):
		t.Fatal("no notification for a key file written in place")
	}
	if rev := d.Snapshots()[0].Revision; rev != "..b" {
		t.Errorf("revision = %q, want ..b", rev)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFromSecret(t *testing.T) {
	tests := []struct {
		name    string
		typ     corev1.SecretType
		data    map[string][]byte
		wantErr error
		reason  string
	}{
		{"dockerconfigjson", corev1.SecretTypeDockerConfigJson, map[string][]byte{".dockerconfigjson": good}, nil, ""},
		{"dockercfg", corev1.SecretTypeDockercfg, map[string][]byte{".dockercfg": []byte(`{"r.test":{"username":"u","password":"p"}}`)}, nil, ""},
		{"opaque", corev1.SecretTypeOpaque, map[string][]byte{".dockerconfigjson": good}, ErrUnsupportedType, "UnsupportedType"},
		{"wrong key for type", corev1.SecretTypeDockercfg, map[string][]byte{".dockerconfigjson": good}, dockercfg.ErrInvalid, "Invalid"},
		{"oversized", corev1.SecretTypeDockerConfigJson, map[string][]byte{".dockerconfigjson": make([]byte, dockercfg.MaxSize+1)}, dockercfg.ErrInvalid, "Invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s", UID: "u1", ResourceVersion: "7"}, Type: tt.typ, Data: tt.data}
			s := FromSecret(sec)
			if !errors.Is(s.Err, tt.wantErr) && !(tt.wantErr == nil && s.Err == nil) {
				t.Fatalf("err = %v, want %v", s.Err, tt.wantErr)
			}
			if s.Reason() != tt.reason {
				t.Errorf("reason = %q, want %q", s.Reason(), tt.reason)
			}
			if s.Name != "ns/s" || s.Revision != "u1/7" {
				t.Errorf("name %q revision %q", s.Name, s.Revision)
			}
			if s.Err != nil && !strings.Contains(s.Err.Error(), "ns/s") {
				t.Errorf("error %q does not name the Secret", s.Err)
			}
		})
	}
}

// TestSecretDecodedOncePerVersion (issue 21, point 4): a Secret is decoded
// once per version, so the agent's last good snapshot and the next sync
// share one set of entries; a new version is decoded afresh, and data keys
// other than the two credential keys are not kept in the cache.
func TestSecretDecodedOncePerVersion(t *testing.T) {
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s", UID: "u1", ResourceVersion: "1"}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{".dockerconfigjson": good, "padding": make([]byte, 512<<10)}}
	client := fake.NewClientset(sec)
	s := runSecrets(t, client, []string{"s"}, "")
	first, again := s.Snapshots(), s.Snapshots()
	if first[0].Err != nil || len(first[0].Set) != 1 || &first[0].Set[0] != &again[0].Set[0] {
		t.Fatalf("the same version was decoded twice (or not at all): %v", first[0].Err)
	}
	obj, _, _ := s.watches[0].store.GetByKey("ns/s")
	if _, kept := obj.(*corev1.Secret).Data["padding"]; kept {
		t.Error("a data key nodecreds does not read is kept in the cache")
	}
	next := sec.DeepCopy()
	next.ResourceVersion = "2"
	next.Data = map[string][]byte{".dockerconfigjson": []byte(`{"auths":{"r.test":{"auth":"` + testsupport.B64("u:new") + `"}}}`)}
	if _, err := client.CoreV1().Secrets("ns").Update(t.Context(), next, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		snaps := s.Snapshots()
		if snaps[0].Revision == "u1/2" {
			if len(snaps[0].Set) != 1 || snaps[0].Set[0].Entry.Password != "new" {
				t.Fatalf("the new version was not decoded: %+v", snaps[0].Set)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the update was not seen")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(s.parsed) != 1 {
		t.Errorf("%d snapshots kept, want the current one", len(s.parsed))
	}
}

// runSecrets runs a Secrets source over a fake clientset until the test
// ends, and returns it once its caches are in.
func runSecrets(t *testing.T, client *fake.Clientset, names []string, node string) *Secrets {
	t.Helper()
	s := NewSecrets(kubetest.FromClientset(client), "ns", names, "", node, logrus.NewEntry(logrus.New()))
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	go func() { _ = s.Run(ctx) }()
	select {
	case <-s.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("caches did not sync")
	}
	return s
}

// TestSecretsScopedInformers checks precedence and the missing-Secret
// snapshot through client-go's fake clientset (a narrow unit test; the real
// API server path is in test/).
func TestSecretsScopedInformers(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "b", UID: "ub", ResourceVersion: "1"}, Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": good}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a", UID: "ua", ResourceVersion: "2"}, Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": good}},
	)
	s := runSecrets(t, client, []string{"b", "missing", "a"}, "")
	snaps := s.Snapshots()
	if len(snaps) != 3 || snaps[0].Name != "ns/b" || snaps[2].Name != "ns/a" {
		t.Fatalf("snapshots not in --secret order: %+v", snaps)
	}
	if !errors.Is(snaps[1].Err, ErrNotFound) {
		t.Errorf("missing Secret: %v", snaps[1].Err)
	}
	if Revision(snaps) == Revision(snaps[:2]) {
		t.Errorf("revision does not depend on every source")
	}
}

// A FIFO where a Secret key should be is refused at once, naming it.
func TestReadDirRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, dockercfg.KeyConfigJSON)
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan Snapshot, 1)
	go func() { done <- readDir(dir) }()
	select {
	case s := <-done:
		if s.Err == nil || !strings.Contains(s.Err.Error(), p) || !strings.Contains(s.Err.Error(), "FIFO") {
			t.Errorf("want an error naming %s as a FIFO, got %v", p, s.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading the folder blocked on a FIFO")
	}
}

func secretWithSelector(name, selector string) *corev1.Secret {
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("u-" + name), ResourceVersion: "1"},
		Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": good}}
	if selector != "-" {
		sec.Annotations = map[string]string{AnnotationNodeSelector: selector}
	}
	return sec
}

func names(snaps []Snapshot) []string {
	out := make([]string, len(snaps))
	for i, s := range snaps {
		out[i] = s.Name
		if s.Err != nil {
			out[i] += "!" + s.Reason()
		}
	}
	return out
}

// TestForNode: which Secrets apply to a node, by their node-selector
// annotation ("-": none) and the node's labels.
func TestForNode(t *testing.T) {
	all := []*corev1.Secret{
		secretWithSelector("everywhere", "-"),
		secretWithSelector("pool-a", "pool=a"),
		secretWithSelector("pool-bc", "pool in (b,c)"),
		secretWithSelector("not-gpu", "!gpu"),
		secretWithSelector("invalid", "zone notin (x-zz"),
		secretWithSelector("empty", ""),
	}
	snaps := make([]Snapshot, len(all))
	for i, sec := range all {
		snaps[i] = FromSecret(sec)
	}
	tests := []struct {
		name string
		node *NodeLabels
		want []string
	}{
		{"pool a", &NodeLabels{Name: "n", Found: true, Labels: labels.Set{"pool": "a"}},
			[]string{"ns/everywhere", "ns/pool-a", "ns/not-gpu", "ns/invalid!Invalid", "ns/empty!Invalid"}},
		{"pool c with a gpu", &NodeLabels{Name: "n", Found: true, Labels: labels.Set{"pool": "c", "gpu": "true"}},
			[]string{"ns/everywhere", "ns/pool-bc", "ns/invalid!Invalid", "ns/empty!Invalid"}},
		{"no labels", &NodeLabels{Name: "n", Found: true},
			[]string{"ns/everywhere", "ns/not-gpu", "ns/invalid!Invalid", "ns/empty!Invalid"}},
		// Node unknown: every Secret for some nodes applies nowhere, one
		// whose annotation does not parse too (its last good content must
		// not stay in force on a node gone).
		{"node not found", &NodeLabels{Name: "n"},
			[]string{"ns/everywhere", "ns/pool-a!NodeUnknown", "ns/pool-bc!NodeUnknown", "ns/not-gpu!NodeUnknown", "ns/invalid!NodeUnknown", "ns/empty!NodeUnknown"}},
		{"no node name", nil,
			[]string{"ns/everywhere", "ns/pool-a!NodeUnknown", "ns/pool-bc!NodeUnknown", "ns/not-gpu!NodeUnknown", "ns/invalid!NodeUnknown", "ns/empty!NodeUnknown"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ForNode(snaps, tt.node)
			if !slices.Equal(names(got), tt.want) {
				t.Errorf("applies: %v\nwant      %v", names(got), tt.want)
			}
			for _, s := range got {
				if s.Err != nil && (!strings.Contains(s.Err.Error(), s.Name) || !strings.Contains(s.Err.Error(), AnnotationNodeSelector)) {
					t.Errorf("error %q does not name the Secret and the annotation", s.Err)
				}
				if s.Reason() == "Invalid" && strings.Contains(s.Err.Error(), "x-zz") {
					t.Errorf("error %q echoes the annotation's value", s.Err)
				}
			}
		})
	}
}

// TestSecretsFollowNodeLabels: a label change signals and changes the
// snapshots; an update that leaves the labels alone (the agent's own
// status) does not signal.
func TestSecretsFollowNodeLabels(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"pool": "a"}}}
	client := fake.NewClientset(node, secretWithSelector("pool-a", "pool=a"), secretWithSelector("pool-b", "pool=b"))
	s := runSecrets(t, client, []string{"pool-a", "pool-b"}, "n1")
	ctx := t.Context()
	drain := func() {
		for {
			select {
			case <-s.Changed():
			case <-time.After(300 * time.Millisecond):
				return
			}
		}
	}
	drain()
	if got := names(s.Snapshots()); !slices.Equal(got, []string{"ns/pool-a"}) {
		t.Fatalf("pool a applies %v", got)
	}
	nodes := client.CoreV1().Nodes()
	update := func(mutate func(*corev1.Node)) {
		n, err := nodes.Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mutate(n)
		if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update(func(n *corev1.Node) { n.Annotations = map[string]string{"nodecreds.io/revision": "x"} })
	select {
	case <-s.Changed():
		t.Errorf("an update that left the labels alone signalled a change")
	case <-time.After(500 * time.Millisecond):
	}
	update(func(n *corev1.Node) { n.Labels["pool"] = "b" })
	select {
	case <-s.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("no change signalled for a relabel")
	}
	if got := names(s.Snapshots()); !slices.Equal(got, []string{"ns/pool-b"}) {
		t.Errorf("after the relabel, applies %v", got)
	}
}

// TestRuntimeAuthAnnotation: only "true" opts a Secret in, and the
// annotation survives the informer's trimming.
func TestRuntimeAuthAnnotation(t *testing.T) {
	for value, want := range map[string]bool{"true": true, "false": false, "yes": false, "": false} {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s",
			Annotations: map[string]string{AnnotationRuntimeAuth: value, "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
			Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": good}}
		sec = trimSecret(sec).(*corev1.Secret)
		if s := FromSecret(sec); s.Err != nil || s.RuntimeAuth != want {
			t.Errorf("annotation %q: RuntimeAuth %v (err %v), want %v", value, s.RuntimeAuth, s.Err, want)
		}
		if len(sec.Annotations) != 1 {
			t.Errorf("trimmed annotations: %v", sec.Annotations)
		}
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s"}, Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": good}}
	if s := FromSecret(trimSecret(sec).(*corev1.Secret)); s.RuntimeAuth {
		t.Error("a Secret without the annotation opted in")
	}
}

// TestExpiresAtAnnotation: the annotation is read through the trimmed
// cache copy; one that does not parse is reported (naming the Secret and
// why, never blocking the credentials) and ignored.
func TestExpiresAtAnnotation(t *testing.T) {
	tests := []struct {
		name     string
		value    *string
		want     time.Time
		wantErr  bool
		errMatch string
	}{
		{"absent", nil, time.Time{}, false, ""},
		{"utc", ptr("2026-12-01T10:00:00Z"), time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), false, ""},
		{"offset and fraction", ptr("2026-12-01T12:00:00.5+02:00"), time.Date(2026, 12, 1, 10, 0, 0, 5e8, time.UTC), false, ""},
		{"unix seconds", ptr("1764583200"), time.Time{}, true, "Unix seconds"},
		{"date only", ptr("2026-12-01"), time.Time{}, true, "RFC 3339"},
		{"empty", ptr(""), time.Time{}, true, "RFC 3339"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ann := map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"}
			if tt.value != nil {
				ann[AnnotationExpiresAt] = *tt.value
			}
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s", Annotations: ann},
				Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": good}}
			s := FromSecret(trimSecret(sec).(*corev1.Secret))
			if s.Err != nil {
				t.Fatalf("the credentials are blocked: %v", s.Err)
			}
			if !s.ExpiresAt.Equal(tt.want) {
				t.Errorf("ExpiresAt = %v, want %v", s.ExpiresAt, tt.want)
			}
			if (s.ExpiryErr != nil) != tt.wantErr {
				t.Fatalf("ExpiryErr = %v, want error %v", s.ExpiryErr, tt.wantErr)
			}
			if tt.wantErr {
				msg := s.ExpiryErr.Error()
				if !errors.Is(s.ExpiryErr, ErrExpiresAt) || !strings.Contains(msg, "ns/s") || !strings.Contains(msg, tt.errMatch) {
					t.Errorf("ExpiryErr %q: want ErrExpiresAt naming ns/s and %q", msg, tt.errMatch)
				}
			}
		})
	}
}

func ptr(s string) *string { return &s }
