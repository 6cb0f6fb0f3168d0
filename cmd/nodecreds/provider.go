package main

import (
	"fmt"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/nodecreds/nodecreds/internal/config"
	"github.com/nodecreds/nodecreds/internal/provider"
	"github.com/nodecreds/nodecreds/internal/pullsecret"
)

func newProviderCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "credential-provider",
		Short: "Kubelet image credential provider plugin answering from the file nodecreds keeps",
		Long: `Speak the kubelet's exec credential provider protocol
(credentialprovider.kubelet.k8s.io/v1): read a CredentialProviderRequest on
stdin, answer with the credentials the kubelet's own matching finds for the
image in --file (the kubelet file nodecreds keeps in sync), with a short
cache duration and cacheKeyType Registry. An image without credentials gets
an empty answer, so the kubelet falls back to its other sources.

With --service-account it answers per workload instead (the kubelet's
provider entry nodecreds-sa, with tokenAttributes): the Pod's
ServiceAccount names pull Secrets of its namespace in the annotation
nodecreds.io/pull-secret, and the plugin reads them from the API server with
the Pod's own token, so the namespace's RBAC decides what the Pod gets. It
never answers from the node's files. A failure writes nothing on stdout, one
line 'nodecreds-sa: <Reason>: <message>' on stderr (the kubelet logs it and
goes on to its other sources) and exits 1; the answers are counted by reason
in --state-dir for the agent's metric nodecreds_workload_answers_total.

The kubelet runs it: install it with 'sync --install-credential-provider' and
name it in the kubelet's CredentialProviderConfig (docs/credential-provider.md).
Every flag can also be set as NODECREDS_<FLAG> or in the YAML file named by
--config.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadProvider(cmd.Flags())
			if sa, _ := cmd.Flags().GetBool("service-account"); err != nil && sa {
				// The kubelet logs only a failed run's stderr: a broken
				// entry says so in the same one line as any failure.
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s: %s\n", config.ServiceAccountProviderBinary, pullsecret.BadRequest, oneLine(redactURLs(err.Error())))
				return errFailed
			}
			if err != nil {
				return err
			}
			if cfg.ServiceAccount {
				return serveServiceAccount(cmd, cfg)
			}
			return provider.Serve(cmd.InOrStdin(), cmd.OutOrStdout(), provider.Options{HostRoot: cfg.HostRoot, File: cfg.File, CacheDuration: cfg.CacheDuration})
		},
	}
	config.ProviderFlags(cmd.Flags())
	return cmd
}

// serveServiceAccount runs the service-account-token mode. The kubelet
// logs a failed run's stderr, so a failure is one line there, its Reason
// first, and nothing else: client-go's own log is dropped.
func serveServiceAccount(cmd *cobra.Command, cfg config.Provider) error {
	klog.SetLogger(logr.Discard())
	err := provider.ServeServiceAccount(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), provider.ServiceAccountOptions{
		HostRoot:          cfg.HostRoot,
		APIServer:         cfg.APIServer,
		CAFile:            cfg.APICAFile,
		KubeletKubeconfig: cfg.KubeletKubeconfig,
		Timeout:           cfg.APITimeout,
		CacheDuration:     cfg.CacheDuration,
		StateDir:          cfg.StateDir,
	})
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", config.ServiceAccountProviderBinary, oneLine(redactURLs(err.Error())))
		return errFailed
	}
	return nil
}
