package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// ReadManifest decodes a multi-document YAML file into objects.
func ReadManifest(path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseManifest(data, path)
}

// ParseManifest decodes multi-document YAML (named name in errors) into
// objects.
func ParseManifest(data []byte, name string) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return objs, nil
		} else if err != nil {
			return nil, fmt.Errorf("decoding %s: %w", name, err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// Apply is the client-go equivalent of `kubectl apply --server-side`
// (with dryRun: of `--dry-run=server`): each object is server-side applied
// in order.
func Apply(ctx context.Context, cfg *rest.Config, objs []*unstructured.Unstructured, dryRun bool) error {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: "nodecreds-test", Force: ptr(true)}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		data, err := obj.MarshalJSON()
		if err != nil {
			return err
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			ri = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		if _, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts); err != nil {
			return fmt.Errorf("applying %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// Install applies a manifest whose first object is its Namespace, as
// `kubectl apply -f` would: a server-side dry run of the whole (after the
// Namespace exists, since namespaced objects are refused before), then for
// real.
func Install(ctx context.Context, cfg *rest.Config, path string) error {
	objs, err := ReadManifest(path)
	if err != nil {
		return err
	}
	if len(objs) == 0 || objs[0].GetKind() != "Namespace" {
		return fmt.Errorf("%s: the first object is not its Namespace", path)
	}
	if err := Apply(ctx, cfg, objs[:1], true); err != nil {
		return fmt.Errorf("server-side dry run of the Namespace: %w", err)
	}
	if err := Apply(ctx, cfg, objs[:1], false); err != nil {
		return fmt.Errorf("applying the Namespace: %w", err)
	}
	if err := Apply(ctx, cfg, objs, true); err != nil {
		return fmt.Errorf("server-side dry run of %s: %w", path, err)
	}
	if err := Apply(ctx, cfg, objs, false); err != nil {
		return fmt.Errorf("applying %s: %w", path, err)
	}
	return nil
}
