package main

import (
	"github.com/spf13/cobra"

	"github.com/nodecreds/nodecreds/internal/config"
	"github.com/nodecreds/nodecreds/internal/provider"
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

The kubelet runs it: install it with 'sync --install-credential-provider' and
name it in the kubelet's CredentialProviderConfig (docs/credential-provider.md).
Every flag can also be set as NODECREDS_<FLAG> or in the YAML file named by
--config.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadProvider(cmd.Flags())
			if err != nil {
				return err
			}
			return provider.Serve(cmd.InOrStdin(), cmd.OutOrStdout(), provider.Options{HostRoot: cfg.HostRoot, File: cfg.File, CacheDuration: cfg.CacheDuration})
		},
	}
	config.ProviderFlags(cmd.Flags())
	return cmd
}
