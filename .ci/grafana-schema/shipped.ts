// The type every shipped dashboard must satisfy: Grafana's own Dashboard type
// from @grafana/schema, plus only the fields Grafana itself writes into
// dashboard JSON that the schema's type omits:
//
// - templating.list[].definition: the text of a query variable's query, which
//   Grafana's variable editor saves beside `query` (the schema types `query`
//   only).
import type { Dashboard, VariableModel } from '@grafana/schema';

export type GrafanaVariable = VariableModel & { definition?: string };

export type ShippedDashboard = Omit<Dashboard, 'templating'> & {
  templating?: { list?: GrafanaVariable[] };
};
