package kube_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"github.com/nodecreds/nodecreds/internal/kube"
)

// request is what the API server received.
type request struct {
	method, path, query, contentType, accept, userAgent, body string
}

// apiServer answers every request with the object whose kind the path
// names (a watch with one ADDED event) and records what it received.
type apiServer struct {
	*httptest.Server
	mu   sync.Mutex
	seen []request
}

func newAPIServer(t *testing.T) *apiServer {
	s := &apiServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *apiServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.seen = append(s.seen, request{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), r.Header.Get("Accept"), r.Header.Get("User-Agent"), string(body)})
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if parts[len(parts)-1] == "missing" {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(apierrors.NewNotFound(corev1.Resource("secrets"), "missing").ErrStatus)
		return
	}
	kinds := map[string]string{"secrets": "Secret", "nodes": "Node", "events": "Event", "daemonsets": "DaemonSet"}
	apiVersion := "v1"
	if parts[0] == "apis" {
		apiVersion = "apps/v1"
	}
	for i := len(parts) - 1; i >= 0; i-- {
		kind, ok := kinds[parts[i]]
		if !ok {
			continue
		}
		obj := map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": map[string]any{"name": "answered"}}
		switch {
		case r.URL.Query().Get("watch") == "true":
			_ = json.NewEncoder(w).Encode(map[string]any{"type": "ADDED", "object": obj})
		case i == len(parts)-1 && r.Method == http.MethodGet: // a list
			_ = json.NewEncoder(w).Encode(map[string]any{"apiVersion": apiVersion, "kind": kind + "List", "metadata": map[string]any{}, "items": []any{obj}})
		default:
			_ = json.NewEncoder(w).Encode(obj)
		}
		return
	}
	http.NotFound(w, r)
}

func (s *apiServer) last() request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[len(s.seen)-1]
}

// Each call nodecreds makes reaches the API server as the typed clientset's
// would: the path (namespaced or not), the verb, the options as query
// parameters, the patch type, in JSON; and the answer is decoded.
func TestClientRequests(t *testing.T) {
	api := newAPIServer(t)
	c, err := kube.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	patch := []byte(`{"metadata":{"annotations":{"a":"b"}}}`)
	for _, tc := range []struct {
		name string
		call func() (string, error) // the name of what was answered
		want request
	}{
		{"get a Secret", func() (string, error) {
			s, err := c.Secrets("ns").Get(ctx, "s1", metav1.GetOptions{})
			return s.Name, err
		}, request{method: "GET", path: "/api/v1/namespaces/ns/secrets/s1"}},
		{"list Secrets by label", func() (string, error) {
			l, err := c.Secrets("ns").List(ctx, metav1.ListOptions{LabelSelector: "a=b", ResourceVersion: "7"})
			return l.Items[0].Name, err
		}, request{method: "GET", path: "/api/v1/namespaces/ns/secrets", query: "labelSelector=a%3Db&resourceVersion=7"}},
		{"list Secrets of every namespace", func() (string, error) {
			l, err := c.Secrets("").List(ctx, metav1.ListOptions{})
			return l.Items[0].Name, err
		}, request{method: "GET", path: "/api/v1/secrets"}},
		{"get a Node (cluster-scoped)", func() (string, error) {
			n, err := c.Nodes().Get(ctx, "n1", metav1.GetOptions{})
			return n.Name, err
		}, request{method: "GET", path: "/api/v1/nodes/n1"}},
		{"list Nodes by field", func() (string, error) {
			l, err := c.Nodes().List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=n1"})
			return l.Items[0].Name, err
		}, request{method: "GET", path: "/api/v1/nodes", query: "fieldSelector=metadata.name%3Dn1"}},
		{"annotate a Node", func() (string, error) {
			n, err := c.Nodes().Patch(ctx, "n1", types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "nodecreds"})
			return n.Name, err
		}, request{method: "PATCH", path: "/api/v1/nodes/n1", query: "fieldManager=nodecreds", contentType: "application/merge-patch+json", body: string(patch)}},
		{"set a Node's condition", func() (string, error) {
			n, err := c.Nodes().Patch(ctx, "n1", types.StrategicMergePatchType, patch, metav1.PatchOptions{FieldManager: "nodecreds"}, "status")
			return n.Name, err
		}, request{method: "PATCH", path: "/api/v1/nodes/n1/status", query: "fieldManager=nodecreds", contentType: "application/strategic-merge-patch+json", body: string(patch)}},
		{"PatchStatus", func() (string, error) {
			n, err := c.Nodes().PatchStatus(ctx, "n1", patch)
			return n.Name, err
		}, request{method: "PATCH", path: "/api/v1/nodes/n1/status", contentType: "application/strategic-merge-patch+json", body: string(patch)}},
		{"create an Event", func() (string, error) {
			e, err := c.Events("default").Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "n1.1"}, Reason: "R"}, metav1.CreateOptions{})
			return e.Name, err
		}, request{method: "POST", path: "/api/v1/namespaces/default/events", contentType: "application/json"}},
		{"update an Event", func() (string, error) {
			e, err := c.Events("default").Update(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "n1.1"}, Reason: "R"}, metav1.UpdateOptions{})
			return e.Name, err
		}, request{method: "PUT", path: "/api/v1/namespaces/default/events/n1.1", contentType: "application/json"}},
		{"patch an Event", func() (string, error) {
			e, err := c.Events("default").Patch(ctx, "n1.1", types.StrategicMergePatchType, []byte(`{"count":2}`), metav1.PatchOptions{})
			return e.Name, err
		}, request{method: "PATCH", path: "/api/v1/namespaces/default/events/n1.1", contentType: "application/strategic-merge-patch+json", body: `{"count":2}`}},
		{"list DaemonSets (apps/v1)", func() (string, error) {
			l, err := c.DaemonSets("nodecreds").List(ctx, metav1.ListOptions{})
			return l.Items[0].Name, err
		}, request{method: "GET", path: "/apis/apps/v1/namespaces/nodecreds/daemonsets"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, err := tc.call()
			if err != nil {
				t.Fatal(err)
			}
			if name != "answered" {
				t.Errorf("decoded the answer as %q", name)
			}
			got := api.last()
			if got.method != tc.want.method || got.path != tc.want.path || got.query != tc.want.query {
				t.Errorf("sent %s %s?%s, want %s %s?%s", got.method, got.path, got.query, tc.want.method, tc.want.path, tc.want.query)
			}
			if got.contentType != tc.want.contentType {
				t.Errorf("Content-Type %q, want %q", got.contentType, tc.want.contentType)
			}
			if tc.want.body != "" && got.body != tc.want.body {
				t.Errorf("body %q, want %q", got.body, tc.want.body)
			}
			if strings.Contains(got.accept, "protobuf") || !strings.Contains(got.accept, "application/json") {
				t.Errorf("Accept %q: JSON only", got.accept)
			}
		})
	}
}

// An Event created is sent whole, as JSON.
func TestClientSendsEventAsJSON(t *testing.T) {
	api := newAPIServer(t)
	c, err := kube.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "n1.1", Namespace: "default"}, Reason: "CredentialsApplied", Message: "m",
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "n1"}}
	if _, err := c.Events("default").Create(t.Context(), ev, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var sent corev1.Event
	if err := json.Unmarshal([]byte(api.last().body), &sent); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	if sent.Kind != "Event" || sent.APIVersion != "v1" || sent.Reason != ev.Reason || sent.InvolvedObject != ev.InvolvedObject {
		t.Errorf("sent %+v", sent)
	}
}

// A watch streams the API server's events, decoded.
func TestClientWatch(t *testing.T) {
	api := newAPIServer(t)
	c, err := kube.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		watch func() (watch.Interface, error)
		path  string
	}{
		{"Secrets", func() (watch.Interface, error) {
			return c.Secrets("ns").Watch(t.Context(), metav1.ListOptions{LabelSelector: "a=b"})
		}, "/api/v1/namespaces/ns/secrets"},
		{"Nodes", func() (watch.Interface, error) {
			return c.Nodes().Watch(t.Context(), metav1.ListOptions{FieldSelector: "metadata.name=n1"})
		}, "/api/v1/nodes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := tc.watch()
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			ev := <-w.ResultChan()
			obj, ok := ev.Object.(metav1.Object)
			if ev.Type != watch.Added || !ok || obj.GetName() != "answered" {
				t.Errorf("event %s %#v", ev.Type, ev.Object)
			}
			if got := api.last(); got.path != tc.path || !strings.Contains(got.query, "watch=true") {
				t.Errorf("watched %s?%s", got.path, got.query)
			}
		})
	}
}

// The API server's errors keep their type (callers tell a missing Secret
// from an outage with apierrors).
func TestClientErrors(t *testing.T) {
	api := newAPIServer(t)
	c, err := kube.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Secrets("ns").Get(t.Context(), "missing", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a missing Secret: %v, want NotFound", err)
	}
}

// NewForConfig leaves the caller's config as it was, and says who it is
// (client-go's default user agent unless the config names one).
func TestNewForConfig(t *testing.T) {
	for _, tc := range []struct {
		name, userAgent, want string
	}{
		{"default user agent", "", rest.DefaultKubernetesUserAgent()},
		{"the caller's", "nodecreds-test/1", "nodecreds-test/1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := newAPIServer(t)
			cfg := &rest.Config{Host: api.URL, UserAgent: tc.userAgent}
			before := *cfg
			c, err := kube.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.APIPath != before.APIPath || cfg.GroupVersion != before.GroupVersion || cfg.NegotiatedSerializer != before.NegotiatedSerializer || cfg.UserAgent != before.UserAgent {
				t.Errorf("NewForConfig changed the config: %+v", cfg)
			}
			if _, err := c.Nodes().Get(t.Context(), "n1", metav1.GetOptions{}); err != nil {
				t.Fatal(err)
			}
			if got := api.last().userAgent; got != tc.want {
				t.Errorf("User-Agent %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := kube.NewForConfig(&rest.Config{Host: "http://127.0.0.1:1", TLSClientConfig: rest.TLSClientConfig{CAFile: "/nonexistent/ca.crt"}}); err == nil {
		t.Error("a config whose CA file is missing gave a client")
	}
}
